//! Memory copies and scalar accesses that recover from SIGSEGV/SIGBUS raised inside them.
