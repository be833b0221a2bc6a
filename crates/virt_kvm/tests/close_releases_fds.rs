//! Closing vCPUs and partitions releases their kernel objects while the Rust objects are still
//! referenced: counted in `/proc/self/fd` (`anon_inode:kvm-vcpu:N`, `anon_inode:kvm-vm`) and
//! `/proc/self/task`. The only test of its binary, so no other test opens fds meanwhile.

use std::time::Duration;
use std::time::Instant;
use virt_kvm::KvmError;
use virt_kvm::KvmPartition;
use virt_kvm::KvmPartitionOptions;
use virt_kvm::RunRefused;
use virt_kvm::VcpuOptions;
use virt_kvm::VcpuThread;

/// Open `(VM fds, vCPU fds)` of this process.
fn kvm_fds() -> (usize, usize) {
    let mut counts = (0, 0);
    for entry in std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd") {
        let Ok(target) = std::fs::read_link(entry.expect("fd entry").path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if target == "anon_inode:kvm-vm" {
            counts.0 += 1;
        } else if target.starts_with("anon_inode:kvm-vcpu") {
            counts.1 += 1;
        }
    }
    counts
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .count()
}

/// Waits up to 10 s for the thread count to come back to `count`.
fn wait_for_threads(count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads() != count {
        assert!(
            Instant::now() < deadline,
            "{} threads, expected {count}",
            threads()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A partition, or `None` (after saying why) where `/dev/kvm` cannot be opened.
fn partition_or_skip() -> Option<KvmPartition> {
    match KvmPartition::create(KvmPartitionOptions::default()) {
        Ok(partition) => Some(partition),
        Err(error @ KvmError::KvmUnavailable { .. }) => {
            if std::env::var_os("MEMBACKING_REQUIRE_KVM").is_some_and(|v| v == "1") {
                panic!("needs KVM (MEMBACKING_REQUIRE_KVM=1): {error}");
            }
            eprintln!("SKIPPED close_releases_fds: {error}");
            None
        }
        Err(error) => panic!("creating the partition failed: {error}"),
    }
}

fn real_mode_thread(partition: &KvmPartition) -> VcpuThread {
    let no_memory = |_: u64, _: &[u8]| -> Result<(), virt::Error> { Ok(()) };
    let vcpu = partition
        .create_vcpu(&VcpuOptions::real(), &no_memory)
        .expect("create a vCPU");
    VcpuThread::start(vcpu).expect("start the vCPU thread")
}

#[test]
fn closing_vcpus_and_partitions_releases_their_fds_and_threads_while_still_referenced() {
    let start_fds = kvm_fds();
    let start_threads = threads();
    let Some(first) = partition_or_skip() else {
        return;
    };
    let second = partition_or_skip().expect("a second partition");
    let first_thread = real_mode_thread(&first);
    let second_threads = [real_mode_thread(&second), real_mode_thread(&second)];
    assert_eq!(kvm_fds(), (start_fds.0 + 2, start_fds.1 + 3));
    assert_eq!(threads(), start_threads + 3);

    // Closing a vCPU thread releases its fd at once, and its thread.
    first_thread.close();
    assert_eq!(kvm_fds(), (start_fds.0 + 2, start_fds.1 + 2));
    wait_for_threads(start_threads + 2);
    // Closing a partition's vCPUs releases theirs, with the thread objects still alive.
    second.close_vcpus();
    assert_eq!(kvm_fds(), (start_fds.0 + 2, start_fds.1));
    wait_for_threads(start_threads);
    // Dropping the partitions then releases the VM fds (the kernel destroys the VMs).
    drop(first);
    drop(second);
    assert_eq!(kvm_fds(), start_fds);

    // The closed vCPUs refuse everything.
    for thread in second_threads.iter().chain([&first_thread]) {
        assert!(matches!(thread.run(None, |_| {}), Err(RunRefused::Closed)));
        assert!(matches!(thread.idle(), Err(RunRefused::Closed)));
    }
}
