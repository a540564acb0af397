// TalusTestSupport: helpers for tests against the real services.
