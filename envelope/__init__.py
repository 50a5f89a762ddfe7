"""envelope: the trust boundary every call crosses."""
