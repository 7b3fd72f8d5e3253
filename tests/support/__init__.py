"""Reusable test infrastructure: real servers the tests talk to instead of mocks."""
