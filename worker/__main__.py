"""``python -m worker``: run one embedding worker until SIGINT or SIGTERM."""

import logging

from shared.settings import get_settings
from worker.app import build_worker


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("arq").setLevel(logging.WARNING)  # arq logs two lines a job at INFO
    build_worker(settings).run()


if __name__ == "__main__":
    main()
