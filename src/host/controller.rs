//! A controller seen from the host: the admin queue, controller start-up and
//! shutdown, admin commands, and the opening of I/O queues.

use super::queue::Queue;
use super::{Completion, DiscoveryEntry, HostConfig, HostError, IoQueue};
use crate::wire::command::{admin, fctype, Sqe};
use crate::wire::fabrics::{cc, csts, property, PropertyCmd, CNTLID_DYNAMIC, DISCOVERY_NQN};
use crate::wire::identify::{cns, IDENTIFY_LEN};
use crate::wire::log_page::{decode_discovery_log, lid, DISCOVERY_ENTRY_LEN, DISCOVERY_HEADER_LEN};
use byteorder::{ByteOrder, LittleEndian as LE};
use glommio::task::JoinHandle;
use glommio::timer::sleep;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// CC.IOSQES (64-byte SQEs) and CC.IOCQES (16-byte CQEs).
const CC_IO_ENTRY_SIZES: u32 = (6 << 16) | (4 << 20);
/// CC.SHN = 01b, normal shutdown.
const CC_SHN_NORMAL: u32 = 1 << 14;
const CC_SHN_MASK: u32 = 3 << 14;
/// Feature identifiers used here.
const FID_NUMBER_OF_QUEUES: u8 = 0x07;
/// Bound on the discovery log records fetched (each 1 KiB).
const DISCOVERY_RECORDS_MAX: u64 = 4096;
/// Shortest wait for CSTS changes, whatever CAP.TO says.
const READY_TIMEOUT_MIN: Duration = Duration::from_millis(500);

/// A connected, enabled controller: its admin queue and what Identify and
/// the properties told about it.
pub struct Controller {
    /// The admin queue (qid 0).
    pub admin: Queue,
    /// Controller ID the target assigned.
    pub cntlid: u16,
    /// Controller Capabilities property.
    pub cap: u64,
    /// Version property.
    pub vs: u32,
    /// Identify Controller data (4096 bytes).
    pub identify: Vec<u8>,
    /// Maximum data transfer size in bytes (`None`: no limit reported).
    pub mdts_bytes: Option<u32>,
    /// In-capsule data bytes the I/O queues take (IOCCSZ × 16 − 64).
    pub ioccsz_bytes: usize,
    /// Entries of the I/O queues this controller opens: the configured size,
    /// capped at CAP.MQES + 1.
    pub io_queue_size: u16,
    cfg: HostConfig,
    keep_alive: RefCell<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cntlid)
            .field("cap", &format_args!("{:#x}", self.cap))
            .field("vs", &format_args!("{:#x}", self.vs))
            .field("mdts_bytes", &self.mdts_bytes)
            .field("ioccsz_bytes", &self.ioccsz_bytes)
            .field("io_queue_size", &self.io_queue_size)
            .finish()
    }
}

fn fabrics_sqe(fctype: u8) -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::FABRICS).set_fctype(fctype);
    sqe
}

/// CAP.TO: worst-case time to become ready, in 500 ms units.
fn cap_timeout(cap: u64) -> Duration {
    Duration::from_millis(((cap >> 24) & 0xFF) * 500).max(READY_TIMEOUT_MIN)
}

impl Controller {
    /// Connects the admin queue (dynamic controller), reads CAP, enables the
    /// controller (CC.EN with 64/16-byte I/O entries), waits for CSTS.RDY
    /// (bounded by CAP.TO) and reads Identify Controller.
    pub async fn connect(cfg: HostConfig) -> Result<Controller, HostError> {
        let (admin, cntlid) = Queue::connect(&cfg, 0, CNTLID_DYNAMIC).await?;
        let mut c = Controller {
            admin,
            cntlid,
            cap: 0,
            vs: 0,
            identify: Vec::new(),
            mdts_bytes: None,
            ioccsz_bytes: 0,
            io_queue_size: cfg.queue_size,
            cfg,
            keep_alive: RefCell::new(None),
        };
        c.cap = c.property_get(property::CAP, true).await?;
        c.vs = c.property_get(property::VS, false).await? as u32;
        c.property_set(property::CC, false, u64::from(cc::EN | CC_IO_ENTRY_SIZES))
            .await?;
        c.wait_csts(|s| s & csts::RDY != 0, "CSTS.RDY").await?;
        c.identify = c.identify(cns::CONTROLLER, 0).await?;

        let mqes = (c.cap & 0xFFFF) as u16;
        c.io_queue_size = c.cfg.queue_size.min(mqes.saturating_add(1));
        let mdts = c.identify[77];
        if mdts != 0 {
            // MDTS is in units of the minimum page size (CAP.MPSMIN).
            let page = 4096u64 << ((c.cap >> 48) & 0xF);
            let bytes = page.checked_shl(u32::from(mdts)).unwrap_or(u64::MAX);
            c.mdts_bytes = Some(bytes.min(u64::from(u32::MAX)) as u32);
        }
        let ioccsz = LE::read_u32(&c.identify[1792..1796]) as usize;
        c.ioccsz_bytes = (ioccsz * 16).saturating_sub(64);
        Ok(c)
    }

    /// Connects to the discovery subsystem at `addr` (no keep alive).
    pub async fn connect_discovery(addr: SocketAddr) -> Result<Controller, HostError> {
        let mut cfg = HostConfig::new(addr, DISCOVERY_NQN);
        cfg.kato_ms = 0;
        Controller::connect(cfg).await
    }

    /// The configuration this controller was connected with.
    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Polls CSTS (short, growing sleeps) until `done`, CSTS.CFS, or CAP.TO.
    async fn wait_csts(&self, done: impl Fn(u32) -> bool, what: &str) -> Result<(), HostError> {
        let deadline = Instant::now() + cap_timeout(self.cap);
        let mut pause = Duration::from_millis(1);
        loop {
            let s = self.property_get(property::CSTS, false).await? as u32;
            if s & csts::CFS != 0 {
                return Err(HostError::Protocol(format!(
                    "controller fatal status (CSTS {s:#x}) waiting for {what}"
                )));
            }
            if done(s) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HostError::Protocol(format!(
                    "timed out waiting for {what} (CSTS {s:#x})"
                )));
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Property Get: a 4- or 8-byte controller property at `offset`.
    pub async fn property_get(&self, offset: u32, size8: bool) -> Result<u64, HostError> {
        let mut sqe = fabrics_sqe(fctype::PROPERTY_GET);
        PropertyCmd {
            size8,
            offset,
            value: 0,
        }
        .encode(&mut sqe);
        let c = self.admin.submit(sqe, None, 0).await?;
        let lo = u64::from(c.cqe.dw0);
        Ok(if size8 {
            lo | (u64::from(c.cqe.dw1) << 32)
        } else {
            lo
        })
    }

    /// Property Set: writes a 4- or 8-byte controller property at `offset`.
    pub async fn property_set(
        &self,
        offset: u32,
        size8: bool,
        value: u64,
    ) -> Result<(), HostError> {
        let mut sqe = fabrics_sqe(fctype::PROPERTY_SET);
        PropertyCmd {
            size8,
            offset,
            value,
        }
        .encode(&mut sqe);
        self.admin.submit(sqe, None, 0).await?;
        Ok(())
    }

    /// Identify with `cns` for `nsid`: the 4096-byte data structure.
    pub async fn identify(&self, cns: u8, nsid: u32) -> Result<Vec<u8>, HostError> {
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin::IDENTIFY)
            .set_nsid(nsid)
            .set_cdw(10, u32::from(cns));
        Ok(self.admin.submit(sqe, None, IDENTIFY_LEN).await?.data)
    }

    /// Active namespace IDs (Identify CNS 0x02), ascending.
    pub async fn active_namespaces(&self) -> Result<Vec<u32>, HostError> {
        let b = self.identify(cns::ACTIVE_NS_LIST, 0).await?;
        Ok(b.chunks_exact(4)
            .map(LE::read_u32)
            .take_while(|&id| id != 0)
            .collect())
    }

    /// Size in blocks (NSZE) and block size in bytes of namespace `nsid`,
    /// from Identify Namespace and its current LBA format.
    pub async fn namespace_geometry(&self, nsid: u32) -> Result<(u64, u32), HostError> {
        let b = self.identify(cns::NAMESPACE, nsid).await?;
        let nsze = LE::read_u64(&b[0..8]);
        let fmt = usize::from(b[26] & 0xF);
        let at = 128 + fmt * 4;
        let lbads = (LE::read_u32(&b[at..at + 4]) >> 16) & 0xFF;
        if !(9..=31).contains(&lbads) {
            return Err(HostError::Protocol(format!(
                "namespace {nsid}: LBADS {lbads}"
            )));
        }
        Ok((nsze, 1u32 << lbads))
    }

    /// Get Log Page: `len` bytes (a multiple of 4) of log `lid` from byte
    /// `offset` (a multiple of 4), in pieces of at most MDTS.
    pub async fn get_log_page(
        &self,
        lid: u8,
        nsid: u32,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, HostError> {
        if len == 0 || !len.is_multiple_of(4) || !offset.is_multiple_of(4) {
            return Err(HostError::Invalid(format!(
                "log page offset {offset} length {len}: need non-zero multiples of 4"
            )));
        }
        let piece = self
            .mdts_bytes
            .map_or(len, |m| (m as usize & !3).max(4))
            .min(len);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = piece.min(len - out.len());
            let at = offset + out.len() as u64;
            let numd = (n / 4 - 1) as u32;
            let mut sqe = Sqe::default();
            sqe.set_opcode(admin::GET_LOG_PAGE)
                .set_nsid(nsid)
                .set_cdw(10, u32::from(lid) | (numd << 16))
                .set_cdw(11, numd >> 16)
                .set_cdw(12, at as u32)
                .set_cdw(13, (at >> 32) as u32);
            let c = self.admin.submit(sqe, None, n).await?;
            out.extend_from_slice(&c.data);
        }
        Ok(out)
    }

    /// The discovery log (Get Log Page 0x70): the header first for the
    /// record count, then the whole log, retried while GENCTR changes.
    pub async fn discovery_log(&self) -> Result<Vec<DiscoveryEntry>, HostError> {
        for _ in 0..4 {
            let h = self
                .get_log_page(lid::DISCOVERY, 0, 0, DISCOVERY_HEADER_LEN)
                .await?;
            let genctr = LE::read_u64(&h[0..8]);
            let numrec = LE::read_u64(&h[8..16]);
            if numrec > DISCOVERY_RECORDS_MAX {
                return Err(HostError::Protocol(format!(
                    "discovery log with {numrec} records"
                )));
            }
            let len = DISCOVERY_HEADER_LEN + numrec as usize * DISCOVERY_ENTRY_LEN;
            let page = self.get_log_page(lid::DISCOVERY, 0, 0, len).await?;
            let (gen2, entries) = decode_discovery_log(&page)
                .ok_or_else(|| HostError::Protocol("discovery log longer than announced".into()))?;
            if gen2 == genctr {
                return Ok(entries);
            }
        }
        Err(HostError::Protocol("discovery log kept changing".into()))
    }

    /// Get Features `fid` with `cdw11`; the result is in `cqe.dw0`.
    pub async fn get_features(&self, fid: u8, cdw11: u32) -> Result<Completion, HostError> {
        self.get_features_data(fid, cdw11, 0).await
    }

    /// Get Features for features that return data (e.g. host identifier
    /// 0x81: 16 bytes with CDW11 bit 0 set).
    pub async fn get_features_data(
        &self,
        fid: u8,
        cdw11: u32,
        data_len: usize,
    ) -> Result<Completion, HostError> {
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin::GET_FEATURES)
            .set_cdw(10, u32::from(fid))
            .set_cdw(11, cdw11);
        self.admin.submit(sqe, None, data_len).await
    }

    /// Set Features `fid` with `cdw11` and optional data.
    pub async fn set_features(
        &self,
        fid: u8,
        cdw11: u32,
        data: Option<&[u8]>,
    ) -> Result<Completion, HostError> {
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin::SET_FEATURES)
            .set_cdw(10, u32::from(fid))
            .set_cdw(11, cdw11);
        self.admin.submit(sqe, data, 0).await
    }

    /// Asks for `n` I/O queue pairs; returns how many the controller allows
    /// (the smaller of its submission and completion queue counts).
    pub async fn set_number_of_queues(&self, n: u16) -> Result<u16, HostError> {
        if n == 0 {
            return Err(HostError::Invalid("zero I/O queues".into()));
        }
        let n0 = u32::from(n - 1);
        let c = self
            .set_features(FID_NUMBER_OF_QUEUES, n0 | (n0 << 16), None)
            .await?;
        let nsq = c.cqe.dw0 & 0xFFFF;
        let ncq = c.cqe.dw0 >> 16;
        Ok((nsq.min(ncq) + 1).min(0xFFFF) as u16)
    }

    /// Sends one Keep Alive.
    pub async fn keep_alive(&self) -> Result<(), HostError> {
        keep_alive_on(&self.admin).await
    }

    /// Starts a task sending Keep Alive every KATO / 2 (nothing when KATO
    /// is 0). It stops with [`Controller::stop_keep_alive`], on shutdown,
    /// when the controller is dropped, or when the admin queue closes.
    pub fn start_keep_alive(&self) {
        self.stop_keep_alive();
        if self.cfg.kato_ms == 0 {
            return;
        }
        let period = Duration::from_millis(u64::from(self.cfg.kato_ms / 2).max(1));
        let weak = self.admin.downgrade();
        let task = glommio::spawn_local(async move {
            loop {
                sleep(period).await;
                let Some(q) = weak.upgrade() else { break };
                if let Err(e) = keep_alive_on(&q).await {
                    if q.is_closed() {
                        break;
                    }
                    log::warn!("keep alive failed: {e}");
                }
            }
        })
        .detach();
        *self.keep_alive.borrow_mut() = Some(task);
    }

    /// Stops the keep-alive task, if one runs.
    pub fn stop_keep_alive(&self) {
        if let Some(t) = self.keep_alive.borrow_mut().take() {
            t.cancel();
        }
    }

    /// Opens I/O queue `qid` of this controller: a new TCP connection whose
    /// Connect carries this CNTLID and the same host NQN and host ID. Its
    /// in-capsule data limit is set from IOCCSZ.
    pub async fn connect_io_queue(&self, qid: u16) -> Result<IoQueue, HostError> {
        if qid == 0 {
            return Err(HostError::Invalid("qid 0 is the admin queue".into()));
        }
        let mut cfg = self.cfg.clone();
        cfg.queue_size = self.io_queue_size;
        let (q, _) = Queue::connect(&cfg, qid, self.cntlid).await?;
        q.set_in_capsule_limit(self.ioccsz_bytes);
        Ok(IoQueue::new(q, self.mdts_bytes))
    }

    /// Normal shutdown: stops keep alive, sets CC.SHN = 01b, waits for
    /// CSTS.SHST = complete (bounded by CAP.TO), then closes the admin queue.
    /// The admin queue is closed even when a step fails.
    pub async fn shutdown(&self) -> Result<(), HostError> {
        self.stop_keep_alive();
        let r = async {
            let c = self.property_get(property::CC, false).await? as u32;
            let c = (c & !CC_SHN_MASK) | CC_SHN_NORMAL;
            self.property_set(property::CC, false, u64::from(c)).await?;
            self.wait_csts(
                |s| s & csts::SHST_MASK == csts::SHST_COMPLETE,
                "CSTS.SHST complete",
            )
            .await
        }
        .await;
        self.admin.close().await;
        r
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop_keep_alive();
    }
}

async fn keep_alive_on(q: &Queue) -> Result<(), HostError> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::KEEP_ALIVE);
    q.submit(sqe, None, 0).await?;
    Ok(())
}
