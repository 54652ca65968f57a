"""What the tests share: builders of fixture data, processes, browsers. Fixtures themselves
are pytest plugins (tests/conftest.py names them in pytest_plugins)."""
