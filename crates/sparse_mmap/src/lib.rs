//! Virtual address reservations with memfd/file-backed or anonymous pages placed into them.
