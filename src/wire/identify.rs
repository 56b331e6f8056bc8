//! Identify data structures (NVMe Base 2.0 §5.17.2; NVM Command Set 1.0 §4.1.5;
//! NVMe-oF 1.1 §4.1 for the fabrics fields of Identify Controller).

use byteorder::{ByteOrder, LittleEndian as LE};

pub const IDENTIFY_LEN: usize = 4096;

/// CNS values served.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_DESCRIPTORS: u8 = 0x03;
    /// I/O command set specific Identify Controller (CSI in CDW11 31:24).
    pub const CTRL_CSI: u8 = 0x06;
}

/// Controller type (CNTRLTYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerType {
    Io = 1,
    Discovery = 2,
}

/// What Identify Controller reports; built by the target from its config.
#[derive(Debug, Clone)]
pub struct ControllerInfo {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    pub cntlid: u16,
    pub version: u32,
    pub ctype: ControllerType,
    /// MDTS as a power of two of 4 KiB pages (0 = no limit).
    pub mdts: u8,
    /// Max outstanding commands per queue.
    pub maxcmd: u16,
    pub nn: u32,
    pub subnqn: String,
    /// Keep alive granularity in 100 ms units.
    pub kas: u16,
    /// In-capsule data bytes supported on I/O queues.
    pub in_capsule_data: u32,
    pub volatile_write_cache: bool,
    /// Abort limit, 0's based.
    pub acl: u8,
    /// Asynchronous event request limit, 0's based.
    pub aerl: u8,
    /// Error log entries, 0's based.
    pub elpe: u8,
}

/// Optional NVM command support (ONCS).
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const DSM: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
}

fn put_str(b: &mut [u8], s: &str) {
    // ASCII, space padded, as Identify strings are (§1.5).
    b.fill(b' ');
    for (d, c) in b.iter_mut().zip(s.bytes()) {
        *d = if (0x20..0x7f).contains(&c) { c } else { b'?' };
    }
}

fn put_nqn(b: &mut [u8], s: &str) {
    b.fill(0);
    let n = s.len().min(b.len() - 1);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

pub fn controller(c: &ControllerInfo) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    // VID/SSVID stay 0: no PCI vendor for a fabrics target.
    put_str(&mut b[4..24], &c.serial);
    put_str(&mut b[24..64], &c.model);
    put_str(&mut b[64..72], &c.firmware);
    b[72] = 6; // RAB: recommended arbitration burst
    b[76] = 1 << 1; // CMIC: the subsystem may have several controllers
    b[77] = c.mdts;
    LE::write_u16(&mut b[78..80], c.cntlid);
    LE::write_u32(&mut b[80..84], c.version);
    if c.ctype == ControllerType::Io {
        // OAES: namespace attribute notices.
        LE::write_u32(&mut b[92..96], 1 << 8);
    }
    b[111] = c.ctype as u8;
    // OACS 0: no optional admin commands.
    b[258] = c.acl;
    b[259] = c.aerl;
    b[260] = 0x3; // FRMW: slot 1 read-only, one slot
    b[261] = (1 << 1) | (1 << 2); // LPA: commands supported and effects, extended data
    b[262] = c.elpe;
    LE::write_u16(&mut b[266..268], 343); // WCTEMP, kelvin
    LE::write_u16(&mut b[268..270], 373); // CCTEMP
    LE::write_u16(&mut b[320..322], c.kas);
    // CTRATT: 128-bit host identifier (bit 0), traffic based keep alive
    // (TBKAS, bit 6): I/O counts as keep alive.
    LE::write_u32(&mut b[96..100], 1 | (1 << 6));
    if c.ctype == ControllerType::Io {
        b[512] = 0x66; // SQES: 64 bytes
        b[513] = 0x44; // CQES: 16 bytes
    }
    LE::write_u16(&mut b[514..516], c.maxcmd);
    LE::write_u32(&mut b[516..520], c.nn);
    if c.ctype == ControllerType::Io {
        LE::write_u16(
            &mut b[520..522],
            oncs::COMPARE | oncs::DSM | oncs::WRITE_ZEROES,
        );
        b[525] = c.volatile_write_cache as u8;
    }
    // SGLS: SGLs supported (bit 0); offsets in capsules (bit 20).
    LE::write_u32(&mut b[536..540], 1 | (1 << 20));
    put_nqn(&mut b[768..1024], &c.subnqn);
    // Fabrics: IOCCSZ and IORCSZ in 16-byte units, ICDOFF 0, FCATT 0 (dynamic
    // controller model), MSDBD 1.
    LE::write_u32(&mut b[1792..1796], (64 + c.in_capsule_data) / 16);
    LE::write_u32(&mut b[1796..1800], 1);
    b[1803] = 1;
    // Power state 0: 0.01 W units; a nominal figure, no transitions.
    LE::write_u16(&mut b[2048..2050], 1000);
    b
}

/// What Identify Namespace reports.
#[derive(Debug, Clone)]
pub struct NamespaceInfo {
    pub blocks: u64,
    /// Blocks the backing really holds (NUSE): fewer than `blocks` for a
    /// sparse file.
    pub used: u64,
    /// log2 of the block size.
    pub lbads: u8,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub uuid: [u8; 16],
    /// Deallocated blocks read as zeroes.
    pub dealloc_reads_zero: bool,
    pub thin: bool,
}

pub fn namespace(n: &NamespaceInfo) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    LE::write_u64(&mut b[0..8], n.blocks); // NSZE
    LE::write_u64(&mut b[8..16], n.blocks); // NCAP
    LE::write_u64(&mut b[16..24], n.used.min(n.blocks)); // NUSE
    b[24] = n.thin as u8; // NSFEAT
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS: format 0
    b[30] = 1; // NMIC: may be attached to several controllers
    if n.dealloc_reads_zero {
        // DLFEAT: deallocated blocks read zeroes; Write Zeroes may deallocate.
        b[33] = 0x1 | (1 << 3);
    }
    b[104..120].copy_from_slice(&n.nguid);
    b[120..128].copy_from_slice(&n.eui64);
    // LBAF0: no metadata, LBADS, relative performance best.
    LE::write_u32(&mut b[128..132], (n.lbads as u32) << 16);
    b
}

/// Active namespace ID list: ids greater than `after`, ascending, at most 1024.
pub fn active_ns_list(ids: &[u32], after: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut sorted: Vec<u32> = ids.iter().copied().filter(|&i| i > after).collect();
    sorted.sort_unstable();
    for (i, id) in sorted.iter().take(IDENTIFY_LEN / 4).enumerate() {
        LE::write_u32(&mut b[i * 4..i * 4 + 4], *id);
    }
    b
}

/// Namespace identification descriptor list (CNS 0x03): EUI64, NGUID, UUID, CSI.
pub fn ns_descriptors(n: &NamespaceInfo) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    let mut at = 0;
    let mut put = |nidt: u8, id: &[u8]| {
        b[at] = nidt;
        b[at + 1] = id.len() as u8;
        b[at + 4..at + 4 + id.len()].copy_from_slice(id);
        at += 4 + id.len();
    };
    put(1, &n.eui64);
    put(2, &n.nguid);
    put(3, &n.uuid);
    put(4, &[0]); // CSI: NVM command set
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ControllerInfo {
        ControllerInfo {
            serial: "abc".into(),
            model: "nvmf-tpc".into(),
            firmware: "0.1.0".into(),
            cntlid: 5,
            version: 0x10400,
            ctype: ControllerType::Io,
            mdts: 5,
            maxcmd: 128,
            nn: 4,
            subnqn: "nqn.x".into(),
            kas: 10,
            in_capsule_data: 8192,
            volatile_write_cache: true,
            acl: 3,
            aerl: 3,
            elpe: 63,
        }
    }

    #[test]
    fn controller_fields() {
        let b = controller(&info());
        assert_eq!(&b[4..8], b"abc ");
        assert_eq!(b[77], 5);
        assert_eq!(LE::read_u16(&b[78..80]), 5);
        assert_eq!(LE::read_u32(&b[516..520]), 4);
        assert_eq!(&b[768..773], b"nqn.x");
        assert_eq!(b[773], 0);
        assert_eq!(LE::read_u32(&b[1792..1796]), (64 + 8192) / 16);
        assert_eq!(b[111], 1);
    }

    #[test]
    fn namespace_list_and_descriptors() {
        let b = active_ns_list(&[3, 1, 2], 1);
        assert_eq!(LE::read_u32(&b[0..4]), 2);
        assert_eq!(LE::read_u32(&b[4..8]), 3);
        assert_eq!(LE::read_u32(&b[8..12]), 0);
        let n = NamespaceInfo {
            blocks: 100,
            used: 40,
            lbads: 12,
            nguid: [1; 16],
            eui64: [2; 8],
            uuid: [3; 16],
            dealloc_reads_zero: true,
            thin: true,
        };
        let d = ns_descriptors(&n);
        assert_eq!((d[0], d[1]), (1, 8));
        assert_eq!((d[12], d[13]), (2, 16));
        assert_eq!(&d[16..32], &[1; 16]);
        assert_eq!((d[32], d[33]), (3, 16));
        let ns = namespace(&n);
        assert_eq!(LE::read_u64(&ns[0..8]), 100);
        assert_eq!(LE::read_u64(&ns[16..24]), 40);
        assert_eq!(ns[130], 12);
    }
}
