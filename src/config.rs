//! The validated target configuration: listeners, subsystems, namespaces,
//! allowed hosts and limits. Built from the command line, checked before any
//! executor starts so that nothing half-starts.

use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4420";
pub const DEFAULT_SUBSYSTEM_NQN: &str = "nqn.2026-11.io.nvmf-tpc:default";
pub const DEFAULT_DATA_DIR: &str = "nvmf-tpc-data";
pub const DEFAULT_DATA_FILE: &str = "default.img";
pub const DEFAULT_DATA_FILE_SIZE: u64 = 1 << 30;
pub const DEFAULT_MODEL: &str = "nvmf-tpc";
pub const FIRMWARE_REVISION: &str = env!("CARGO_PKG_VERSION");

/// Queue entries per I/O queue (CAP.MQES + 1).
pub const DEFAULT_QUEUE_DEPTH: u16 = 128;
pub const MIN_QUEUE_DEPTH: u16 = 2;
pub const MAX_QUEUE_DEPTH: u16 = 1024;
/// Admin queue entries the Linux host uses; we allow up to the I/O depth.
pub const ADMIN_QUEUE_DEPTH_MIN: u16 = 2;
/// Largest transfer of one command (MDTS).
pub const DEFAULT_MAX_IO_SIZE: u32 = 128 * 1024;
pub const MAX_MAX_IO_SIZE: u32 = 8 * 1024 * 1024;
/// Largest H2CData PDU the host may send (ICResp MAXH2CDATA); transfers
/// above it arrive as several H2CData PDUs per R2T.
pub const MAX_H2C_DATA: u32 = 128 * 1024;
/// Largest C2HData PDU we send; larger reads are split.
pub const MAX_C2H_DATA: u32 = 128 * 1024;
/// In-capsule data accepted on I/O queues.
pub const DEFAULT_IN_CAPSULE_DATA: u32 = 8192;
pub const MAX_IN_CAPSULE_DATA: u32 = 128 * 1024;
/// The admin queue always accepts 8 KiB in-capsule (NVMe/TCP 1.0 §3.3: admin
/// capsules are at least 8 KiB so that Connect data fits).
pub const ADMIN_IN_CAPSULE_DATA: u32 = 8192;
/// I/O queues per controller (`--max-io-queues`), as Linux nvmet's default.
pub const DEFAULT_IO_QUEUES: u16 = 128;
pub const MAX_IO_QUEUES: u16 = 1024;
/// Namespaces per subsystem.
pub const MAX_NAMESPACES: usize = 1024;
pub const MAX_SUBSYSTEMS: usize = 256;
/// Connections (queues) one core accepts at once (`--max-connections`).
pub const DEFAULT_CONNECTIONS_PER_CORE: u32 = 4096;
pub const MAX_CONNECTIONS_PER_CORE: u32 = 65536;
/// Controllers one core owns at once (`--max-controllers`).
pub const DEFAULT_CONTROLLERS_PER_CORE: u32 = 1024;
pub const MAX_CONTROLLERS_PER_CORE: u32 = 16384;
/// DMA memory per executor (registered with its io_uring).
pub const DEFAULT_DMA_MEMORY: usize = 64 << 20;
/// Keep alive granularity we report (KAS, 100 ms units).
pub const KEEP_ALIVE_GRANULARITY_100MS: u16 = 1;
/// Discovery controllers created with KATO 0 still expire (as Linux nvmet does),
/// so a host that vanishes does not leave them behind forever.
pub const DISCOVERY_DEFAULT_KATO_MS: u32 = 120_000;
/// Bounds of `--connect-timeout` and `--pdu-timeout`.
pub const MIN_SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);
pub const MAX_SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A regular file, opened O_DIRECT.
    File(PathBuf),
    /// A block device, opened O_DIRECT.
    Block(PathBuf),
    /// Memory shared by every core; volatile.
    Ram(u64),
    /// Discards writes, reads zeroes.
    Null(u64),
}

#[derive(Debug, Clone)]
pub struct NamespaceConfig {
    pub nsid: u32,
    pub backing: Backing,
    pub block_size: u32,
    pub size_bytes: u64,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    pub eui64: [u8; 8],
    /// LBA ranges (inclusive) whose reads and writes fail with a media error.
    pub bad_blocks: Vec<(u64, u64)>,
}

impl NamespaceConfig {
    pub fn blocks(&self) -> u64 {
        self.size_bytes / self.block_size as u64
    }

    /// Does the byte range touch a bad block?
    pub fn hits_bad_block(&self, offset: u64, len: u64) -> bool {
        if self.bad_blocks.is_empty() || len == 0 {
            return false;
        }
        let shift = self.block_size.trailing_zeros();
        let (first, last) = (offset >> shift, (offset + len - 1) >> shift);
        self.bad_blocks
            .iter()
            .any(|&(a, b)| first <= b && a <= last)
    }
}

/// Bad-block ranges a namespace may carry.
pub const MAX_BAD_BLOCK_RANGES: usize = 64;

#[derive(Debug, Clone)]
pub struct SubsystemConfig {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub namespaces: Vec<NamespaceConfig>,
}

impl SubsystemConfig {
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }

    /// Does a write need a flush to survive power loss on some namespace?
    /// Files and block devices: yes (the device's cache, the file system's
    /// metadata). RAM and null namespaces have no cache to flush: RAM holds
    /// data only as long as the process, null keeps nothing.
    pub fn has_volatile_write_cache(&self) -> bool {
        self.namespaces
            .iter()
            .any(|n| matches!(n.backing, Backing::File(_) | Backing::Block(_)))
    }
    pub fn namespace(&self, nsid: u32) -> Option<&NamespaceConfig> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
    }
    /// Largest NSID (Identify Controller NN).
    pub fn nn(&self) -> u32 {
        self.namespaces.iter().map(|n| n.nsid).max().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub listen: Vec<SocketAddr>,
    pub cpus: Vec<usize>,
    pub subsystems: Vec<SubsystemConfig>,
    pub queue_depth: u16,
    pub max_io_size: u32,
    pub in_capsule_data: u32,
    /// Largest H2CData PDU the host may send (ICResp MAXH2CDATA).
    pub maxh2cdata: u32,
    /// Largest C2HData PDU we send; bigger reads are split.
    pub max_c2h_data: u32,
    /// I/O queues per controller.
    pub max_io_queues: u16,
    /// Connections per core.
    pub max_connections: usize,
    /// Controllers owned per core.
    pub max_controllers: usize,
    /// Controllers one host NQN may hold on the whole target.
    pub max_controllers_per_host: usize,
    pub dma_memory: usize,
    /// Executors poll this long after their last work before they park.
    pub idle_poll: std::time::Duration,
    /// A new connection must send ICReq and Connect within this.
    pub connect_timeout: std::time::Duration,
    /// A PDU begun must be complete within this.
    pub pdu_timeout: std::time::Duration,
    /// TCP congestion control set on accepted sockets (None: the system's).
    pub tcp_congestion: Option<String>,
    /// Receive and send buffer size set on accepted sockets (0: the
    /// kernel's autotuning).
    pub socket_buffer: usize,
}

impl TargetConfig {
    pub fn subsystem(&self, nqn: &str) -> Option<(usize, &SubsystemConfig)> {
        self.subsystems
            .iter()
            .enumerate()
            .find(|(_, s)| s.nqn == nqn)
    }
    /// MDTS in units of the minimum page size (4 KiB), as a power of two.
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / 4096).trailing_zeros() as u8
    }
}

/// Receive and send buffer of accepted connections unless told otherwise:
/// what SPDK's target sets.
pub const DEFAULT_SOCKET_BUFFER: usize = 2 << 20;
/// Largest `--socket-buffer`: kernel memory per connection and direction.
pub const MAX_SOCKET_BUFFER: usize = 64 << 20;

/// Longest `--idle-poll`: beyond it polling costs more than a wake-up saves.
pub const MAX_IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Parse durations like `0`, `50us`, `2ms`, `1s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 0, 50us, 2ms)"))?;
    let us = match unit {
        "" if n == 0 => 0,
        "us" => n,
        "ms" => n.saturating_mul(1000),
        "s" => n.saturating_mul(1_000_000),
        _ => return Err(format!("'{s}': use a unit of us, ms or s")),
    };
    Ok(std::time::Duration::from_micros(us))
}

/// Parse sizes like `4096`, `512K`, `64M`, `1G`, `2T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size unit in '{s}' (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 4096, 512M, 1G)"))?;
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("size '{s}' is zero or too large"))
}

/// A `--namespace` value before it is resolved against the file system:
/// `PATH`, `ram:SIZE` or `null:SIZE`, each optionally followed by `,bs=512|4096`
/// and any number of `,badblocks=FIRST-LAST` (LBAs, inclusive): reads and
/// writes touching them fail with a media error, as on a disk with bad
/// sectors (Linux null_blk's `badblocks` does the same), so hosts and tests
/// can see how errors travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub backing: Backing,
    pub block_size: Option<u32>,
    pub bad_blocks: Vec<(u64, u64)>,
}

pub fn parse_namespace_spec(s: &str) -> Result<NamespaceSpec, String> {
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or("");
    let mut block_size = None;
    let mut bad_blocks = Vec::new();
    for opt in parts {
        match opt.split_once('=') {
            Some(("bs", v)) => {
                let bs = parse_size(v)?;
                if bs != 512 && bs != 4096 {
                    return Err(format!("block size {bs} in '{s}': use 512 or 4096"));
                }
                block_size = Some(bs as u32);
            }
            Some(("badblocks", v)) => {
                let range = v
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                    .filter(|(a, b)| a <= b)
                    .ok_or_else(|| format!("badblocks={v} in '{s}': use FIRST-LAST (LBAs)"))?;
                if bad_blocks.len() == MAX_BAD_BLOCK_RANGES {
                    return Err(format!(
                        "more than {MAX_BAD_BLOCK_RANGES} badblocks ranges in '{s}'"
                    ));
                }
                bad_blocks.push(range);
            }
            _ => {
                return Err(format!(
                    "unknown namespace option '{opt}' in '{s}' (known: bs=, badblocks=)"
                ))
            }
        }
    }
    let backing = if let Some(sz) = head.strip_prefix("ram:") {
        Backing::Ram(parse_size(sz)?)
    } else if let Some(sz) = head.strip_prefix("null:") {
        Backing::Null(parse_size(sz)?)
    } else if head.is_empty() {
        return Err("empty namespace spec (use PATH, ram:SIZE or null:SIZE)".into());
    } else {
        // File or block device: decided when the path is opened.
        Backing::File(PathBuf::from(head))
    };
    Ok(NamespaceSpec {
        backing,
        block_size,
        bad_blocks,
    })
}

/// A checked NQN (NVMe Base 2.0 §4.5): starts with "nqn.", at most 223 bytes, printable.
pub fn check_nqn(nqn: &str) -> Result<(), String> {
    if !nqn.starts_with("nqn.") {
        return Err(format!("'{nqn}' is not an NQN (it must start with 'nqn.')"));
    }
    if nqn.len() > crate::wire::fabrics::NQN_MAX_LEN {
        return Err(format!("NQN '{nqn}' is longer than 223 bytes"));
    }
    if nqn.bytes().any(|c| !(0x21..0x7f).contains(&c)) {
        return Err(format!(
            "NQN '{nqn}' has spaces or non-printable characters"
        ));
    }
    Ok(())
}

/// FNV-1a, 64-bit: a stable hash for identifiers derived from names, so that
/// NGUID/UUID/serial stay the same across restarts.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(std::iter::once(&0xFFu8)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    h
}

/// Stable 16-byte identifier of (subsystem, nsid) for NGUID and UUID.
pub fn namespace_ids(subnqn: &str, nsid: u32) -> ([u8; 16], [u8; 16], [u8; 8]) {
    let a = stable_hash(&[b"nguid", subnqn.as_bytes(), &nsid.to_le_bytes()]);
    let b = stable_hash(&[b"nguid2", subnqn.as_bytes(), &nsid.to_le_bytes()]);
    let mut nguid = [0u8; 16];
    nguid[..8].copy_from_slice(&a.to_be_bytes());
    nguid[8..].copy_from_slice(&b.to_be_bytes());
    let mut uuid = nguid;
    uuid.reverse();
    // RFC 9562 version 8 (custom), variant 10.
    uuid[6] = (uuid[6] & 0x0F) | 0x80;
    uuid[8] = (uuid[8] & 0x3F) | 0x80;
    let e = stable_hash(&[b"eui64", subnqn.as_bytes(), &nsid.to_le_bytes()]);
    (nguid, uuid, e.to_be_bytes())
}

/// Default serial number of a subsystem: 20 hex digits from its NQN.
pub fn default_serial(nqn: &str) -> String {
    format!("{:016x}", stable_hash(&[nqn.as_bytes()]))[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("0").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap().as_micros(), 0);
        assert_eq!(parse_duration("50us").unwrap().as_micros(), 50);
        assert_eq!(parse_duration("2ms").unwrap().as_micros(), 2000);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn specs() {
        assert_eq!(
            parse_namespace_spec("ram:1G").unwrap().backing,
            Backing::Ram(1 << 30)
        );
        let s = parse_namespace_spec("null:64M,bs=512").unwrap();
        assert_eq!(s.block_size, Some(512));
        assert!(parse_namespace_spec("ram:1G,bs=1024").is_err());
        assert!(parse_namespace_spec("ram:1G,foo=1").is_err());
        let s = parse_namespace_spec("ram:1M,badblocks=8-15,badblocks=100-100").unwrap();
        assert_eq!(s.bad_blocks, vec![(8, 15), (100, 100)]);
        assert!(parse_namespace_spec("ram:1M,badblocks=9-8").is_err());
        assert!(parse_namespace_spec("ram:1M,badblocks=9").is_err());
        assert!(matches!(
            parse_namespace_spec("/dev/sdb").unwrap().backing,
            Backing::File(_)
        ));
    }

    #[test]
    fn nqns_and_ids() {
        assert!(check_nqn("nqn.2026-11.io.nvmf-tpc:default").is_ok());
        assert!(check_nqn("iqn.x").is_err());
        assert!(check_nqn("nqn.a b").is_err());
        let (a, u, _) = namespace_ids("nqn.x", 1);
        let (b, _, _) = namespace_ids("nqn.x", 2);
        assert_ne!(a, b);
        assert_eq!(namespace_ids("nqn.x", 1).0, a);
        assert_eq!(u[6] >> 4, 8);
        assert_eq!(default_serial("nqn.x").len(), 16);
    }
}
