//! GuestMemory: fault-safe access to guest physical memory through a GuestMemoryAccess backing.
