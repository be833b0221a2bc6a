//! MemoryRegistrar: registers guest RAM with a host facility lazily, in 2 GiB chunks.
