//! Encode/decode round trips and the checks `layout` makes.

use super::*;

const NONE: Digests = Digests {
    header: false,
    data: false,
};
const BOTH: Digests = Digests {
    header: true,
    data: true,
};

fn ch(b: &[u8]) -> CommonHeader {
    CommonHeader::decode(b)
}

#[test]
fn icreq_round_trip() {
    let r = IcReq {
        pfv: 0,
        hpda: 3,
        digests: BOTH,
        maxr2t: 7,
    };
    let b = r.encode();
    let l = layout(ch(&b), Direction::HostToController, NONE, 0).unwrap();
    assert_eq!(l.hlen, 128);
    assert_eq!(IcReq::decode(&b), r);
}

#[test]
fn icresp_round_trip() {
    let r = IcResp {
        pfv: 0,
        cpda: 0,
        digests: Digests {
            header: true,
            data: false,
        },
        maxh2cdata: 131072,
    };
    let b = r.encode();
    assert!(layout(ch(&b), Direction::ControllerToHost, NONE, 0).is_ok());
    assert_eq!(IcResp::decode(&b), r);
}

#[test]
fn direction_is_enforced() {
    let b = IcResp {
        pfv: 0,
        cpda: 0,
        digests: NONE,
        maxh2cdata: 1,
    }
    .encode();
    let e = layout(ch(&b), Direction::HostToController, NONE, 0).unwrap_err();
    assert_eq!(e, FatalError::header(field::TYPE));
}

#[test]
fn unknown_type_rejected() {
    for t in [8u8, 10, 11, 0x7f, 0xff] {
        let mut b = [0u8; 8];
        CommonHeader {
            pdu_type: t,
            flags: 0,
            hlen: 24,
            pdo: 0,
            plen: 24,
        }
        .encode(&mut b);
        assert_eq!(
            layout(ch(&b), Direction::HostToController, NONE, 1 << 20).unwrap_err(),
            FatalError::header(field::TYPE)
        );
    }
}

#[test]
fn capsule_cmd_layouts() {
    for d in [NONE, BOTH] {
        for data in [0usize, 1, 512, 8192] {
            let mut out = Vec::new();
            encode_capsule_cmd(&[0u8; 64], data, d, &mut out);
            let l = layout(ch(&out), Direction::HostToController, d, 8192).unwrap();
            assert_eq!(l.data_len, data);
            assert_eq!(l.hdgst, d.header);
            assert_eq!(l.ddgst, d.data && data > 0);
            assert_eq!(out.len(), l.header_total());
            if data > 0 {
                assert_eq!(l.pdo, l.header_total());
                assert_eq!(l.pad_len(), 0);
            }
        }
    }
}

#[test]
fn in_capsule_over_limit() {
    let mut out = Vec::new();
    encode_capsule_cmd(&[0u8; 64], 8193, NONE, &mut out);
    let e = layout(ch(&out), Direction::HostToController, NONE, 8192).unwrap_err();
    assert_eq!(e.fes, fes::DATA_LIMIT_EXCEEDED);
}

#[test]
fn digest_flags_must_match_negotiation() {
    let mut out = Vec::new();
    encode_capsule_cmd(&[0u8; 64], 0, NONE, &mut out);
    let e = layout(ch(&out), Direction::HostToController, BOTH, 0).unwrap_err();
    assert_eq!(e, FatalError::header(field::FLAGS));
    let mut out = Vec::new();
    encode_capsule_cmd(&[0u8; 64], 0, BOTH, &mut out);
    assert!(layout(ch(&out), Direction::HostToController, NONE, 0).is_err());
}

#[test]
fn every_bad_length_is_rejected() {
    // Sweep hlen, pdo and plen around the valid values of a CapsuleCmd.
    let valid = |hlen: u8, pdo: u8, plen: u32| {
        let h = CommonHeader {
            pdu_type: pdu_type::CAPSULE_CMD,
            flags: 0,
            hlen,
            pdo,
            plen,
        };
        layout(h, Direction::HostToController, NONE, 4096).is_ok()
    };
    for hlen in 0..=255u8 {
        for plen in [0u32, 7, 8, 71, 72, 73, 100, 4096 + 72, 4097 + 72, u32::MAX] {
            for pdo in [0u8, 8, 71, 72, 73, 100, 255] {
                let ok = valid(hlen, pdo, plen);
                let expect = hlen == 72
                    && (plen == 72
                        || (plen > 72
                            && pdo >= 72
                            && (pdo as u32) < plen
                            && plen - pdo as u32 <= 4096));
                assert_eq!(ok, expect, "hlen {hlen} pdo {pdo} plen {plen}");
            }
        }
    }
}

#[test]
fn h2c_data_needs_data() {
    let mut h = [0u8; 24];
    CommonHeader {
        pdu_type: pdu_type::H2C_DATA,
        flags: 0,
        hlen: 24,
        pdo: 0,
        plen: 24,
    }
    .encode(&mut h);
    assert!(layout(ch(&h), Direction::HostToController, NONE, 1 << 20).is_err());
}

#[test]
fn data_pdu_round_trip() {
    for d in [NONE, BOTH] {
        let dh = DataHeader {
            cccid: 9,
            ttag: 3,
            offset: 4096,
            length: 8192,
        };
        let mut out = Vec::new();
        encode_data_header(pdu_type::C2H_DATA, dh, flags::LAST_PDU, d, &mut out);
        let l = layout(ch(&out), Direction::ControllerToHost, d, 1 << 20).unwrap();
        assert_eq!(l.data_len, 8192);
        assert_eq!(DataHeader::decode(&out), dh);
        assert_eq!(l.header.flags & flags::LAST_PDU, flags::LAST_PDU);
        if d.header {
            let crc = u32::from_le_bytes(out[24..28].try_into().unwrap());
            assert_eq!(crc, digest(&out[..24]));
        }
    }
}

#[test]
fn data_pdu_alignment() {
    let dh = DataHeader {
        cccid: 1,
        ttag: 0,
        offset: 0,
        length: 512,
    };
    let mut out = Vec::new();
    encode_data_header_aligned(pdu_type::C2H_DATA, dh, 0, NONE, 128, &mut out);
    assert_eq!(out.len(), 128);
    let l = layout(ch(&out), Direction::ControllerToHost, NONE, 1 << 20).unwrap();
    assert_eq!(l.pdo, 128);
    assert_eq!(l.pad_len(), 128 - 24);
    assert_eq!(l.data_len, 512);
}

#[test]
fn term_req_bounds() {
    let mut out = Vec::new();
    encode_term_req(
        pdu_type::C2H_TERM_REQ,
        FatalError::header(2),
        &[0xAA; 200],
        &mut out,
    );
    assert_eq!(out.len(), 24 + 128);
    let l = layout(ch(&out), Direction::ControllerToHost, NONE, 0).unwrap();
    assert_eq!(l.data_len, 128);
    assert_eq!(decode_term_req(&out), FatalError::header(2));
    let mut bad = out.clone();
    bad[4..8].copy_from_slice(&153u32.to_le_bytes());
    assert!(layout(ch(&bad), Direction::ControllerToHost, NONE, 0).is_err());
}

#[test]
fn crc32c_known_value() {
    // RFC 3720 B.4: 32 bytes of zeroes.
    assert_eq!(digest(&[0u8; 32]), 0x8A91_36AA);
    // The CRC-32C catalogue's check value.
    assert_eq!(digest(b"123456789"), 0xE306_9283);
}

/// CRC-32C bit by bit (reflected polynomial 0x82F63B78), the definition the
/// accelerated crate must match at every length and alignment its folding
/// and tail paths take.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[test]
fn digest_matches_bitwise_crc32c() {
    let bytes: Vec<u8> = (0..9000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for start in 0..8 {
        for len in (0..600).chain([4095, 4096, 4097, 8192 - start]) {
            let d = &bytes[start..start + len];
            assert_eq!(digest(d), crc32c_bitwise(d), "start {start} len {len}");
        }
    }
}
