"""Unit tests are pure: no network. Unknown model ids must fail at once instead of retrying the Hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
