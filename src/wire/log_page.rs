//! Log page formats (NVMe Base 2.0 §5.16.1; discovery log: NVMe-oF 1.1 §5.3).

use super::command::Sqe;
use byteorder::{ByteOrder, LittleEndian as LE};

pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS: u8 = 0x04;
    pub const COMMANDS_EFFECTS: u8 = 0x05;
    pub const DISCOVERY: u8 = 0x70;
}

pub const ERROR_ENTRY_LEN: usize = 64;
pub const SMART_LEN: usize = 512;
pub const FIRMWARE_SLOT_LEN: usize = 512;
pub const CHANGED_NS_LEN: usize = 4096;
pub const COMMANDS_EFFECTS_LEN: usize = 4096;
pub const DISCOVERY_HEADER_LEN: usize = 1024;
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

/// Get Log Page command fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetLogPage {
    pub lid: u8,
    pub lsp: u8,
    /// Retain asynchronous event.
    pub rae: bool,
    /// Bytes requested.
    pub len: usize,
    /// Byte offset into the page.
    pub offset: u64,
}

impl GetLogPage {
    pub fn decode(sqe: &Sqe) -> GetLogPage {
        let cdw10 = sqe.cdw(10);
        let numdl = cdw10 >> 16;
        let numdu = sqe.cdw(11) & 0xFFFF;
        let dwords = ((numdu << 16) | numdl) as usize + 1;
        GetLogPage {
            lid: cdw10 as u8,
            lsp: ((cdw10 >> 8) & 0x7F) as u8,
            rae: cdw10 & (1 << 15) != 0,
            len: dwords * 4,
            offset: (sqe.cdw(12) as u64) | ((sqe.cdw(13) as u64) << 32),
        }
    }
}

/// One error information log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorEntry {
    pub count: u64,
    pub sqid: u16,
    pub cid: u16,
    /// Status field (without phase).
    pub status: u16,
    pub lba: u64,
    pub nsid: u32,
}

pub fn error_log(entries_newest_first: &[ErrorEntry], max_entries: usize) -> Vec<u8> {
    let mut b = vec![0u8; max_entries * ERROR_ENTRY_LEN];
    for (i, e) in entries_newest_first.iter().take(max_entries).enumerate() {
        let d = &mut b[i * ERROR_ENTRY_LEN..(i + 1) * ERROR_ENTRY_LEN];
        LE::write_u64(&mut d[0..8], e.count);
        LE::write_u16(&mut d[8..10], e.sqid);
        LE::write_u16(&mut d[10..12], e.cid);
        // Status field bits 15:1, phase 0.
        LE::write_u16(&mut d[12..14], e.status << 1);
        LE::write_u16(&mut d[14..16], 0xFFFF); // parameter error location: n/a
        LE::write_u64(&mut d[16..24], e.lba);
        LE::write_u32(&mut d[24..28], e.nsid);
    }
    b
}

/// Counters reported in the SMART / health log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmartCounters {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub read_commands: u64,
    pub write_commands: u64,
    pub media_errors: u64,
    pub error_log_entries: u64,
    pub power_on_hours: u64,
}

pub fn smart_log(c: &SmartCounters) -> Vec<u8> {
    let mut b = vec![0u8; SMART_LEN];
    LE::write_u16(&mut b[1..3], 273 + 30); // composite temperature, kelvin
    b[3] = 100; // available spare %
    b[4] = 10; // spare threshold %
               // Data units are thousands of 512-byte units, rounded up (§5.16.1.3).
    let units = |bytes: u64| bytes.div_ceil(512).div_ceil(1000) as u128;
    let put128 = |b: &mut [u8], v: u128| LE::write_u128(b, v);
    put128(&mut b[32..48], units(c.bytes_read));
    put128(&mut b[48..64], units(c.bytes_written));
    put128(&mut b[64..80], c.read_commands as u128);
    put128(&mut b[80..96], c.write_commands as u128);
    put128(&mut b[128..144], c.power_on_hours as u128);
    put128(&mut b[160..176], c.media_errors as u128);
    put128(&mut b[176..192], c.error_log_entries as u128);
    b
}

pub fn firmware_slot_log(firmware: &str) -> Vec<u8> {
    let mut b = vec![0u8; FIRMWARE_SLOT_LEN];
    b[0] = 1; // AFI: slot 1 active
    let frs = &mut b[8..16];
    frs.fill(b' ');
    for (d, c) in frs.iter_mut().zip(firmware.bytes()) {
        *d = c;
    }
    b
}

/// Changed namespace list: up to 1024 NSIDs; 0xFFFFFFFF in the first entry
/// means more changed than fit.
pub fn changed_ns_log(nsids: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; CHANGED_NS_LEN];
    if nsids.len() > CHANGED_NS_LEN / 4 {
        LE::write_u32(&mut b[0..4], 0xFFFF_FFFF);
    } else {
        for (i, id) in nsids.iter().enumerate() {
            LE::write_u32(&mut b[i * 4..i * 4 + 4], *id);
        }
    }
    b
}

/// Commands supported and effects: CSUPP (bit 0), LBCC (bit 1, changes
/// logical block content).
pub fn commands_effects_log(admin: &[u8], io: &[(u8, bool)]) -> Vec<u8> {
    let mut b = vec![0u8; COMMANDS_EFFECTS_LEN];
    for &op in admin {
        LE::write_u32(&mut b[op as usize * 4..op as usize * 4 + 4], 1);
    }
    for &(op, changes) in io {
        let at = 1024 + op as usize * 4;
        LE::write_u32(&mut b[at..at + 4], 1 | ((changes as u32) << 1));
    }
    b
}

/// One discovery log entry (§5.3, Figure 262).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// 2 = NVM subsystem, 3 = current discovery subsystem.
    pub subtype: u8,
    pub portid: u16,
    pub trsvcid: String,
    pub traddr: String,
    pub subnqn: String,
    /// Max admin SQ size.
    pub asqsz: u16,
}

pub const TRTYPE_TCP: u8 = 3;
pub const ADRFAM_IPV4: u8 = 1;
pub const ADRFAM_IPV6: u8 = 2;
pub const SUBTYPE_DISCOVERY: u8 = 1;
pub const SUBTYPE_NVM: u8 = 2;
pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;

fn put_ascii(b: &mut [u8], s: &str, pad: u8) {
    b.fill(pad);
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

pub fn discovery_log(genctr: u64, entries: &[DiscoveryEntry]) -> Vec<u8> {
    let mut b = vec![0u8; DISCOVERY_HEADER_LEN + entries.len() * DISCOVERY_ENTRY_LEN];
    LE::write_u64(&mut b[0..8], genctr);
    LE::write_u64(&mut b[8..16], entries.len() as u64);
    for (i, e) in entries.iter().enumerate() {
        let at = DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN;
        let d = &mut b[at..at + DISCOVERY_ENTRY_LEN];
        d[0] = TRTYPE_TCP;
        d[1] = if e.traddr.contains(':') {
            ADRFAM_IPV6
        } else {
            ADRFAM_IPV4
        };
        d[2] = e.subtype;
        d[3] = 0x2; // TREQ: secure channel not required
        LE::write_u16(&mut d[4..6], e.portid);
        LE::write_u16(&mut d[6..8], 0xFFFF); // dynamic controller
        LE::write_u16(&mut d[8..10], e.asqsz);
        // Address fields are space padded ASCII; NQN is NUL padded.
        put_ascii(&mut d[32..64], &e.trsvcid, b' ');
        put_ascii(&mut d[256..512], &e.subnqn, 0);
        put_ascii(&mut d[512..768], &e.traddr, b' ');
        // TSAS for TCP: SECTYPE 0 (no security).
    }
    b
}

/// A decoded discovery entry (used by the host library and tests).
pub fn decode_discovery_log(b: &[u8]) -> Option<(u64, Vec<DiscoveryEntry>)> {
    if b.len() < DISCOVERY_HEADER_LEN {
        return None;
    }
    let genctr = LE::read_u64(&b[0..8]);
    let n = LE::read_u64(&b[8..16]) as usize;
    let mut out = Vec::new();
    for i in 0..n {
        let at = DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN;
        let d = b.get(at..at + DISCOVERY_ENTRY_LEN)?;
        let s = |x: &[u8]| {
            String::from_utf8_lossy(x)
                .trim_end_matches(['\0', ' '])
                .to_string()
        };
        out.push(DiscoveryEntry {
            subtype: d[2],
            portid: LE::read_u16(&d[4..6]),
            asqsz: LE::read_u16(&d[8..10]),
            trsvcid: s(&d[32..64]),
            subnqn: s(&d[256..512]),
            traddr: s(&d[512..768]),
        });
    }
    Some((genctr, out))
}

/// The slice of a page that a Get Log Page asks for: `None` when the offset is
/// past the page (Invalid Field); a short page is zero-extended by the caller.
pub fn window(page: &[u8], offset: u64, len: usize) -> Option<&[u8]> {
    if offset > page.len() as u64 {
        return None;
    }
    let start = offset as usize;
    let end = start.saturating_add(len).min(page.len());
    Some(&page[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_log_page_fields() {
        let mut s = Sqe::default();
        s.set_cdw(10, (1023 << 16) | (1 << 15) | 0x70)
            .set_cdw(11, 1)
            .set_cdw(12, 4096);
        let g = GetLogPage::decode(&s);
        assert_eq!(g.lid, 0x70);
        assert!(g.rae);
        assert_eq!(g.len, ((1 << 16) + 1023 + 1) * 4);
        assert_eq!(g.offset, 4096);
    }

    #[test]
    fn discovery_round_trip() {
        let e = DiscoveryEntry {
            subtype: SUBTYPE_NVM,
            portid: 1,
            trsvcid: "4420".into(),
            traddr: "127.0.0.1".into(),
            subnqn: "nqn.a".into(),
            asqsz: 32,
        };
        let b = discovery_log(3, std::slice::from_ref(&e));
        assert_eq!(b.len(), 2048);
        let (g, v) = decode_discovery_log(&b).unwrap();
        assert_eq!(g, 3);
        assert_eq!(v, vec![e]);
        assert_eq!(b[1024], TRTYPE_TCP);
        assert_eq!(b[1025], ADRFAM_IPV4);
    }

    #[test]
    fn windows() {
        let p = [1u8, 2, 3, 4];
        assert_eq!(window(&p, 0, 2), Some(&p[..2]));
        assert_eq!(window(&p, 2, 100), Some(&p[2..]));
        assert_eq!(window(&p, 4, 1), Some(&p[4..]));
        assert_eq!(window(&p, 5, 1), None);
        assert_eq!(window(&p, u64::MAX, usize::MAX), None);
    }

    #[test]
    fn smart_units() {
        let b = smart_log(&SmartCounters {
            bytes_read: 512 * 1000 + 1,
            ..Default::default()
        });
        assert_eq!(LE::read_u128(&b[32..48]), 2);
    }
}
