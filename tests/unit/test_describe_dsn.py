"""The demos print the DSN they use with its password masked, whatever its form."""

import pytest

from pgqueue._demo import _describe


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://ada:s3cret@db:5432/app", "postgresql://ada:***@db:5432/app"),
        ("host=db password=s3cret user=ada", "host=db password=*** user=ada"),
        ("host=db password = 's3 c\\'ret' dbname=app", "host=db password = *** dbname=app"),
        ("postgresql://db/app?password=s3cret", "postgresql://db/app?password=***"),
        ("host=db user=ada", "host=db user=ada"),
    ],
)
def test_the_password_is_never_printed(dsn: str, shown: str) -> None:
    assert _describe(dsn) == shown
    assert "s3" not in _describe(dsn)
