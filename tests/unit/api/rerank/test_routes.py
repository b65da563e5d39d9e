from api.rerank.routes import ranking


def test_ranking_is_best_first_with_ties_in_input_order_and_cut_to_top_n():
    scores = [0.1, 0.9, 0.5, 0.9, -2.0]
    assert ranking(scores, None) == [1, 3, 2, 0, 4]
    assert ranking(scores, 2) == [1, 3]
    assert ranking(scores, 10) == [1, 3, 2, 0, 4]
