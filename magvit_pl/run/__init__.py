"""Everything about running magvit-pl, apart from the ideas it runs (see docs/architecture.md)."""
