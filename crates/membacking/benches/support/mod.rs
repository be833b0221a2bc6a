//! What the snapshot and migration benchmarks share: the report line, medians, the warm-up
//! before first touches, deterministic random data, and the data runs of a RAM object.

/// One figure of the report, printed as one JSON line in the project's benchmark format.
pub struct Figure<'a> {
    pub name: &'a str,
    pub value: f64,
    pub unit: &'a str,
    pub baseline: &'a str,
    pub baseline_value: f64,
    /// `ours / baseline` for times and sizes, `baseline / ours` for throughputs.
    pub ratio: f64,
    /// The target on the ratio: `(">=", 0.8)` or `("<=", 3.0)`.
    pub target: (&'a str, f64),
}

impl Figure<'_> {
    pub fn print(&self) {
        let (relation, bound) = self.target;
        let met = if relation == "<=" {
            self.ratio <= bound
        } else {
            self.ratio >= bound
        };
        println!(
            "{{\"name\":\"{}\",\"value\":{:.3},\"unit\":\"{}\",\"baseline\":\"{}\",\"baselineValue\":{:.3},\"ratio\":{:.3},\"target\":\"{relation} {bound}\",\"met\":{met}}}",
            self.name, self.value, self.unit, self.baseline, self.baseline_value, self.ratio
        );
    }
}

/// The median (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Touches and frees 1 GiB so later first touches do not pay for memory handed back to the
/// outer hypervisor (freed memory goes back to it, and first touching it again is slow).
pub fn warm_up() {
    let mut block = vec![0u8; 1 << 30];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&block);
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `len` random bytes, none of whose 8-byte words is zero.
pub fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&(rng.next() | 1).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The runs `[start, end)` of `[0, len)` of a file that hold data (`SEEK_DATA`/`SEEK_HOLE`).
pub fn data_runs(fd: std::os::fd::BorrowedFd<'_>, len: u64) -> Vec<(u64, u64)> {
    use sparse_mmap::Seek;
    let mut runs = Vec::new();
    let mut cursor = 0;
    while cursor < len {
        let Some(data) = sparse_mmap::seek(fd, cursor, Seek::Data).unwrap() else {
            break;
        };
        let hole = sparse_mmap::seek(fd, data, Seek::Hole)
            .unwrap()
            .unwrap_or(len)
            .min(len);
        runs.push((data, hole));
        cursor = hole;
    }
    runs
}
