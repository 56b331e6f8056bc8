//! The receive side of a host queue: PDUs from the target (CapsuleResp,
//! R2T, C2HData, C2HTermReq) checked and matched to their commands' slots.

use super::*;

impl Conn {
    /// The reader task's loop: returns why it stopped.
    async fn read_loop(&self, rx: &mut Rx) -> (ReadStop, Vec<u8>) {
        let mut hdr = [0u8; MAX_HEADER_LEN + DIGEST_LEN];
        loop {
            if let Err(e) = rx.read_into(&mut hdr[..CH_LEN]).await {
                return (e.into(), Vec::new());
            }
            let ch = CommonHeader::decode(&hdr[..CH_LEN]);
            let l = match layout(ch, Direction::ControllerToHost, self.digests, usize::MAX) {
                Ok(l) => l,
                Err(e) => {
                    let msg = format!("bad PDU header {ch:?}");
                    return (ReadStop::Fatal(e, msg), hdr[..CH_LEN].to_vec());
                }
            };
            let ht = l.header_total();
            if let Err(e) = rx.read_into(&mut hdr[CH_LEN..ht]).await {
                return (e.into(), Vec::new());
            }
            let hdr = &hdr[..ht];
            if l.hdgst {
                let got = LE::read_u32(&hdr[l.hlen..]);
                if got != pdu::digest(&hdr[..l.hlen]) {
                    let stop = fatal(
                        fes::HEADER_DIGEST_ERROR,
                        got,
                        format!("header digest error in PDU type {:#x}", ch.pdu_type),
                    );
                    return (stop, hdr[..l.hlen].to_vec());
                }
            }
            let r = match ch.pdu_type {
                pdu_type::CAPSULE_RESP => self.on_capsule_resp(hdr),
                pdu_type::R2T => self.on_r2t(hdr),
                pdu_type::C2H_DATA => self.on_c2h_data(&l, hdr, rx).await,
                pdu_type::C2H_TERM_REQ => {
                    let _ = rx.skip(l.data_len).await;
                    Err(ReadStop::TermReq(decode_term_req(hdr)))
                }
                _ => Err(fatal(
                    fes::PDU_SEQUENCE_ERROR,
                    field::TYPE,
                    format!("unexpected PDU type {:#x}", ch.pdu_type),
                )),
            };
            if let Err(stop) = r {
                return (stop, hdr[..l.hlen].to_vec());
            }
        }
    }

    fn on_capsule_resp(&self, hdr: &[u8]) -> Result<(), ReadStop> {
        let cqe = Cqe::decode(&hdr[8..24]);
        let (idx, res) = {
            let slots = self.slots.borrow();
            let Some(idx) = self.slot_index(&slots, cqe.cid) else {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    RESP_CID_FIELD,
                    format!("CapsuleResp for unknown CID {}", cqe.cid),
                ));
            };
            let s = &slots[idx];
            let res = if s.ddgst_error {
                Err(HostError::Protocol(format!(
                    "data digest error in C2HData of CID {}",
                    cqe.cid
                )))
            } else if cqe.status.is_success() && s.r2t_end != s.tx_len {
                Err(HostError::Protocol(format!(
                    "CID {} completed after asking for {} of {} data bytes",
                    cqe.cid, s.r2t_end, s.tx_len
                )))
            } else if cqe.status.is_success() && s.rx_got != s.rx_len {
                Err(HostError::Protocol(format!(
                    "CID {} completed after {} of {} data bytes",
                    cqe.cid, s.rx_got, s.rx_len
                )))
            } else {
                Ok(cqe)
            };
            (idx, res)
        };
        self.complete(idx, res);
        Ok(())
    }

    fn on_r2t(&self, hdr: &[u8]) -> Result<(), ReadStop> {
        let dh = DataHeader::decode(hdr);
        let waker = {
            let mut slots = self.slots.borrow_mut();
            let Some(idx) = self.slot_index(&slots, dh.cccid) else {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::CCCID,
                    format!("R2T for unknown CID {}", dh.cccid),
                ));
            };
            let s = &mut slots[idx];
            if s.tx_len == 0 {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::CCCID,
                    format!("R2T for CID {}, which has no data to transfer", dh.cccid),
                ));
            }
            if s.r2t.is_some() {
                return Err(fatal(
                    fes::R2T_LIMIT_EXCEEDED,
                    field::CCCID,
                    format!("second outstanding R2T for CID {}", dh.cccid),
                ));
            }
            let (off, len) = (dh.offset as usize, dh.length as usize);
            if len == 0 || off < s.r2t_end || off + len > s.tx_len {
                return Err(fatal(
                    fes::DATA_OUT_OF_RANGE,
                    field::DATAO,
                    format!(
                        "R2T offset {off} length {len} for CID {} ({} bytes, {} requested)",
                        dh.cccid, s.tx_len, s.r2t_end
                    ),
                ));
            }
            if s.abandoned {
                // The data's owner is gone: the command cannot finish.
                return Err(fatal(
                    fes::PDU_SEQUENCE_ERROR,
                    field::CCCID,
                    format!("R2T for abandoned CID {}", dh.cccid),
                ));
            }
            s.r2t_end = off + len;
            s.r2t = Some(dh);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    async fn on_c2h_data(&self, l: &pdu::Layout, hdr: &[u8], rx: &mut Rx) -> Result<(), ReadStop> {
        let dh = DataHeader::decode(hdr);
        if !l.pdo.is_multiple_of(self.hpda_align) {
            return Err(fatal(
                fes::INVALID_HEADER_FIELD,
                field::PDO,
                format!(
                    "C2HData PDO {} ignores HPDA alignment {}",
                    l.pdo, self.hpda_align
                ),
            ));
        }
        let f = l.header.flags;
        let len = l.data_len;
        let off = dh.offset as usize;
        let (mut buf, complete_now) = {
            let mut slots = self.slots.borrow_mut();
            let Some(idx) = self.slot_index(&slots, dh.cccid) else {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::CCCID,
                    format!("C2HData for unknown CID {}", dh.cccid),
                ));
            };
            let s = &mut slots[idx];
            if dh.length as usize != len {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::DATAL,
                    format!("C2HData DATAL {} but {len} data bytes", dh.length),
                ));
            }
            if off != s.rx_got || off + len > s.rx_len {
                return Err(fatal(
                    fes::DATA_OUT_OF_RANGE,
                    field::DATAO,
                    format!(
                        "C2HData offset {off} length {len} for CID {} expecting offset {} of {}",
                        dh.cccid, s.rx_got, s.rx_len
                    ),
                ));
            }
            let success = f & flags::SUCCESS != 0;
            if success && (f & flags::LAST_PDU == 0 || off + len != s.rx_len) {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::FLAGS,
                    format!("C2HData SUCCESS flag before the end of CID {}", dh.cccid),
                ));
            }
            (std::mem::take(&mut s.rx), success)
        };
        rx.skip(l.pad_len()).await?;
        rx.read_into(&mut buf[off..off + len]).await?;
        let mut digest_ok = true;
        if l.ddgst {
            let mut d = [0u8; DIGEST_LEN];
            rx.read_into(&mut d).await?;
            digest_ok = u32::from_le_bytes(d) == pdu::digest(&buf[off..off + len]);
        }
        let idx = {
            let mut slots = self.slots.borrow_mut();
            // The slot is still ours unless the connection failed meanwhile.
            let Some(idx) = self.slot_index(&slots, dh.cccid) else {
                return Ok(());
            };
            let s = &mut slots[idx];
            s.rx = buf;
            s.rx_got += len;
            s.ddgst_error |= !digest_ok;
            idx
        };
        if complete_now {
            let res = if digest_ok {
                Ok(Cqe {
                    cid: dh.cccid,
                    sqid: self.qid,
                    status: Status::SUCCESS,
                    ..Cqe::default()
                })
            } else {
                Err(HostError::Protocol(format!(
                    "data digest error in C2HData of CID {}",
                    dh.cccid
                )))
            };
            self.complete(idx, res);
        }
        Ok(())
    }
}

pub(super) async fn reader_task(conn: Rc<Conn>, mut rx: Rx) {
    let (stop, hdr) = conn.read_loop(&mut rx).await;
    match stop {
        ReadStop::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            conn.fail(Failure::Closed, None)
        }
        ReadStop::Io(e) => conn.fail(Failure::Io(e.kind(), e.to_string()), None),
        ReadStop::TermReq(e) => conn.fail(Failure::TermReq(e), None),
        ReadStop::Fatal(e, msg) => {
            log::warn!("qid {}: {msg}; closing", conn.qid);
            let mut term = Vec::new();
            encode_term_req(pdu_type::H2C_TERM_REQ, e, &hdr, &mut term);
            conn.fail(Failure::Protocol(msg), Some(term));
        }
    }
}
