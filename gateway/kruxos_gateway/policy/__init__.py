"""Policy: the rule language (``rules``) and the decision an invocation gets from it."""
