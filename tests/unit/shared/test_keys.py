from shared import keys


def test_every_key_lives_under_the_project_prefix():
    built = [keys.SYNC_QUEUE, keys.WAKE_CHANNEL, keys.WORKERS, keys.reply_list("a"), keys.worker_info("w")]
    built += [keys.file("f"), keys.file_data("f"), keys.owner_files("o"), keys.owner_batches("o")]
    built += [keys.batch_manifest("b"), keys.chunk_parts("b", 0), keys.chunk_vectors("b", 0), keys.job("b")]
    built += [keys.batch("b"), keys.progress("b")]
    assert all(key.startswith(keys.PREFIX) for key in built)
    assert len(set(built)) == len(built)


def test_per_instance_keys_differ_by_instance():
    assert keys.reply_list("a") != keys.reply_list("b")
    assert keys.worker_info("a") != keys.worker_info("b")
    assert keys.reply_list("a") != keys.worker_info("a")


def test_keys_do_not_collide_with_arq():
    assert not keys.PREFIX.startswith("arq:")
