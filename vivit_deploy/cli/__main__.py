"""``python -m vivit_deploy.cli``: the same as ``vivit-deploy``."""

from vivit_deploy.cli import main

if __name__ == "__main__":
    main()
