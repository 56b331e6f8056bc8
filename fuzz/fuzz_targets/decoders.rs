//! Every decoder of host-supplied structures takes any bytes without
//! panicking, and what decodes re-encodes to the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvmf_tpc::wire::command::{Cqe, Sqe};
use nvmf_tpc::wire::fabrics::{ConnectCmd, ConnectData, PropertyCmd};
use nvmf_tpc::wire::log_page::{decode_discovery_log, window, GetLogPage};
use nvmf_tpc::wire::pdu::{decode_term_req, DataHeader, IcReq, IcResp};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 1024 {
        if let Ok(c) = ConnectData::decode(data) {
            let again = ConnectData::decode(&c.encode()).expect("re-decode");
            assert_eq!(again, c);
        }
    }
    if data.len() >= 128 {
        let r = IcReq::decode(data);
        assert_eq!(IcReq::decode(&r.encode()), r);
        let _ = IcResp::decode(data);
    }
    if data.len() >= 64 {
        let sqe = Sqe::from_slice(data);
        let _ = (
            sqe.opcode(),
            sqe.cid(),
            sqe.nsid(),
            sqe.slba(),
            sqe.nlb(),
            sqe.sgl(),
        );
        let _ = ConnectCmd::decode(&sqe);
        let _ = PropertyCmd::decode(&sqe);
        let g = GetLogPage::decode(&sqe);
        let _ = window(data, g.offset, g.len);
    }
    if data.len() >= 24 {
        let _ = DataHeader::decode(data);
        let _ = decode_term_req(data);
        let c = Cqe::decode(data);
        assert_eq!(Cqe::decode(&c.encode()), c);
    }
    let _ = decode_discovery_log(data);
});
