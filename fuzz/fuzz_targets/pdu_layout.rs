//! Any 8 bytes as a common header, in either direction, with any digest
//! negotiation: `layout` either refuses it or returns a layout whose parts
//! fit inside the PDU length and the data limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvmf_tpc::wire::pdu::{layout, CommonHeader, Digests, Direction, DIGEST_LEN};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let ch = CommonHeader::decode(&data[..8]);
    let dir = if data[8] & 1 == 0 {
        Direction::HostToController
    } else {
        Direction::ControllerToHost
    };
    let d = Digests {
        header: data[8] & 2 != 0,
        data: data[8] & 4 != 0,
    };
    let max = u32::from_le_bytes(data[8..12].try_into().unwrap()) as usize >> 8;
    if let Ok(l) = layout(ch, dir, d, max) {
        let tail = if l.ddgst { DIGEST_LEN } else { 0 };
        assert!(l.header_total() <= l.plen());
        if l.data_len > 0 {
            assert!(l.pdo >= l.header_total());
            assert_eq!(l.pdo + l.data_len + tail, l.plen());
            assert!(l.pad_len() <= 255);
        }
        assert!(l.data_len <= max.max(128));
    }
});
