//! Page-aligned guest physical address ranges and the range algorithms built on them.
