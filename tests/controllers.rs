//! Controllers over loopback: Connect rules, allowed hosts and discovery,
//! properties, Identify, log pages, features, AER/Abort, I/O queues across
//! cores and their teardown, and the error log fed from every core.

mod common;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig, HostError, IoQueue, Queue};
use nvmf_tpc::wire::command::{admin, Sqe};
use nvmf_tpc::wire::fabrics::{csts, property};
use nvmf_tpc::wire::identify::cns;
use nvmf_tpc::wire::log_page::lid;
use nvmf_tpc::wire::status::Status;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

const OTHER_NQN: &str = "nqn.2026-11.io.nvmf-tpc:closed";

#[test]
fn discovery_and_allowed_hosts() {
    let allowed = HostConfig::new("127.0.0.1:1".parse().unwrap(), OTHER_NQN).with_hostid([7; 16]);
    let allowed_nqn = allowed.hostnqn.clone();
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "null:1M",
        "--allow-any-host",
        "--subsystem",
        OTHER_NQN,
        "--namespace",
        "null:1M",
        "--allow-host",
        &allowed_nqn,
    ]);
    let addr = t.addr;
    run(move || async move {
        // The default host sees only the open subsystem.
        let d = Controller::connect_discovery(addr).await.unwrap();
        let e = d.discovery_log().await.unwrap();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].subnqn, NQN);
        assert_eq!(e[0].traddr, "127.0.0.1");
        assert_eq!(e[0].trsvcid, addr.port().to_string());
        // Discovery controllers answer Identify and Keep Alive.
        let id = d.identify(cns::CONTROLLER, 0).await.unwrap();
        assert_eq!(id[111], 2, "CNTRLTYPE discovery");
        d.keep_alive().await.unwrap();
        // It refuses I/O command-set pages.
        assert_eq!(
            status_of(d.get_log_page(lid::SMART, 0xFFFF_FFFF, 0, 512).await),
            Status::INVALID_LOG_PAGE
        );
        // Connect to the closed subsystem: Connect Invalid Host.
        let e = Controller::connect(HostConfig::new(addr, OTHER_NQN)).await;
        assert_eq!(status_of(e), Status::CONNECT_INVALID_HOST);
        // The allowed host connects, and its discovery log lists both.
        let mut cfg = HostConfig::new(addr, OTHER_NQN).with_hostid([7; 16]);
        cfg.addr = addr;
        let c = Controller::connect(cfg.clone()).await.unwrap();
        assert_eq!(
            &c.identify[768..768 + OTHER_NQN.len()],
            OTHER_NQN.as_bytes()
        );
        let mut dcfg = cfg.clone();
        dcfg.subnqn = nvmf_tpc::wire::fabrics::DISCOVERY_NQN.into();
        let d2 = Controller::connect(dcfg).await.unwrap();
        let mut names: Vec<String> = d2
            .discovery_log()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.subnqn)
            .collect();
        names.sort();
        assert_eq!(names, vec![OTHER_NQN.to_string(), NQN.to_string()]);
        // Unknown subsystem: invalid parameters, pointing at SUBNQN in the data.
        let e = Controller::connect(HostConfig::new(addr, "nqn.2026-11.io.nvmf-tpc:nope")).await;
        match e {
            Err(HostError::Status(s, cqe)) => {
                assert_eq!(s, Status::CONNECT_INVALID_PARAMETERS);
                assert_eq!(cqe.dw0, 256 | (1 << 16));
            }
            other => panic!("{other:?}"),
        }
    });
}

/// SPDK's host (v24.01) sends an empty Host NQN unless told one. As Linux
/// nvmet and SPDK's target do, a subsystem that allows any host takes it
/// (its controllers are known by their Host Identifier), one with an allow
/// list refuses it, and the queues of its controller must send it empty too.
#[test]
fn a_host_without_an_nqn_connects_where_any_host_may() {
    let named = HostConfig::new("127.0.0.1:1".parse().unwrap(), OTHER_NQN).with_hostid([7; 16]);
    let named_nqn = named.hostnqn.clone();
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "null:1M",
        "--allow-any-host",
        "--subsystem",
        OTHER_NQN,
        "--namespace",
        "null:1M",
        "--allow-host",
        &named_nqn,
    ]);
    let addr = t.addr;
    run(move || async move {
        let anonymous = |subnqn: &str| {
            let mut c = HostConfig::new(addr, subnqn).with_hostid([9; 16]);
            c.hostnqn = String::new();
            c
        };
        let c = Controller::connect(anonymous(NQN)).await.unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        assert_eq!(q.read(1, 0, 1, 4096).await.unwrap(), vec![0u8; 4096]);
        // An I/O queue naming this controller with a Host NQN is not its own
        // (Connect Invalid Parameters, IPO at HOSTNQN in the data: 512).
        let mut named_io = HostConfig::new(addr, NQN).with_hostid([9; 16]);
        named_io.queue_size = 32;
        match Queue::connect(&named_io, 2, c.cntlid).await {
            Err(HostError::Status(s, cqe)) => {
                assert_eq!(s, Status::CONNECT_INVALID_PARAMETERS);
                assert_eq!(cqe.dw0, 512 | (1 << 16));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        // An allow list does not list the empty NQN.
        let e = Controller::connect(anonymous(OTHER_NQN)).await;
        assert_eq!(status_of(e), Status::CONNECT_INVALID_HOST);
        // Its discovery log lists only what any host may use.
        let d = Controller::connect(anonymous(nvmf_tpc::wire::fabrics::DISCOVERY_NQN))
            .await
            .unwrap();
        let e = d.discovery_log().await.unwrap();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].subnqn, NQN);
    });
}

/// Connect one queue with chosen fields.
async fn raw_connect(
    addr: SocketAddr,
    qid: u16,
    sqsize: u16,
    cntlid: u16,
    hostid: [u8; 16],
    subnqn: &str,
) -> Result<(Queue, u16), HostError> {
    let mut c = HostConfig::new(addr, subnqn).with_hostid(hostid);
    c.queue_size = sqsize + 1;
    c.admin_queue_size = sqsize + 1;
    Queue::connect(&c, qid, cntlid).await
}

#[test]
fn connect_rules() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:1M",
        "--queue-depth",
        "64",
    ]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        assert_eq!(c.set_number_of_queues(2).await.unwrap(), 2);
        let id = c.cntlid;
        let host = nvmf_tpc::host::DEFAULT_HOSTID;
        // Good I/O connect, then the same qid again.
        let (_q1, cid1) = raw_connect(addr, 1, 63, id, host, NQN).await.unwrap();
        assert_eq!(cid1, id);
        let e = raw_connect(addr, 1, 63, id, host, NQN).await;
        assert_eq!(status_of(e), Status::CONNECT_INVALID_PARAMETERS);
        // Beyond the granted queue count (2).
        assert_eq!(
            status_of(raw_connect(addr, 3, 15, id, host, NQN).await),
            Status::CONNECT_INVALID_PARAMETERS
        );
        // SQSIZE above the queue depth.
        assert_eq!(
            status_of(raw_connect(addr, 2, 64, id, host, NQN).await),
            Status::CONNECT_INVALID_PARAMETERS
        );
        // Another host's id for this controller; a controller that does not exist.
        assert_eq!(
            status_of(raw_connect(addr, 2, 15, id, [9; 16], NQN).await),
            Status::CONNECT_INVALID_PARAMETERS
        );
        assert_eq!(
            status_of(raw_connect(addr, 2, 15, 0xFFEE, host, NQN).await),
            Status::CONNECT_INVALID_PARAMETERS
        );
        // Admin queue with a static cntlid.
        assert_eq!(
            status_of(raw_connect(addr, 0, 15, 5, host, NQN).await),
            Status::CONNECT_INVALID_PARAMETERS
        );
        // Number of queues can no longer change once I/O queues exist.
        assert_eq!(
            status_of(c.set_number_of_queues(4).await),
            Status::COMMAND_SEQUENCE_ERROR
        );
    });
}

#[test]
fn properties_identify_logs_features() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:8M",
        "--namespace",
        "null:1G,bs=512",
        "--serial",
        "SN-TEST-1",
        "--model",
        "Model X",
        "--max-io-queues",
        "8",
    ]);
    let addr = t.addr;
    let nguid = run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        // Properties.
        let cap = c.property_get(property::CAP, true).await.unwrap();
        assert_eq!(cap & 0xFFFF, 127, "MQES");
        assert_ne!(cap & (1 << 37), 0, "NVM command set");
        assert_eq!(c.property_get(property::VS, false).await.unwrap(), 0x10400);
        assert_eq!(c.property_get(property::CSTS, false).await.unwrap() & 1, 1);
        assert_eq!(
            status_of(c.property_set(property::CAP, true, 0).await),
            Status::INVALID_FIELD
        );
        assert_eq!(
            status_of(c.property_get(0x40, false).await),
            Status::INVALID_FIELD
        );
        // Identify Controller.
        let id = &c.identify;
        assert_eq!(&id[4..13], b"SN-TEST-1");
        assert_eq!(&id[24..31], b"Model X");
        assert_eq!(id[77], 5, "MDTS 128K");
        assert_eq!(u16le(id, 78), c.cntlid);
        assert_eq!(u32le(id, 516), 2, "NN");
        assert_eq!(
            u16le(id, 520) & 0b1101,
            0b1101,
            "ONCS compare, DSM, write zeroes"
        );
        assert_eq!(
            id[525] & 1,
            0,
            "VWC: RAM and null namespaces have no write cache"
        );
        assert_ne!(u16le(id, 320), 0, "KAS");
        assert_ne!(u32le(id, 536) & 1, 0, "SGLS");
        // Identify Namespace / lists / descriptors.
        let ns = c.identify(cns::NAMESPACE, 2).await.unwrap();
        assert_eq!(u64le(&ns, 0), (1u64 << 30) / 512);
        assert_eq!(ns[130], 9, "LBADS 512");
        let list = c.identify(cns::ACTIVE_NS_LIST, 0).await.unwrap();
        assert_eq!(
            (u32le(&list, 0), u32le(&list, 4), u32le(&list, 8)),
            (1, 2, 0)
        );
        let list = c.identify(cns::ACTIVE_NS_LIST, 1).await.unwrap();
        assert_eq!((u32le(&list, 0), u32le(&list, 4)), (2, 0));
        let d = c.identify(cns::NS_DESCRIPTORS, 1).await.unwrap();
        assert_eq!((d[12], d[13]), (2, 16), "NGUID descriptor");
        let nguid = d[16..32].to_vec();
        assert!(nguid.iter().any(|&b| b != 0));
        assert_eq!(
            &ns[104..120],
            &c.identify(cns::NS_DESCRIPTORS, 2).await.unwrap()[16..32]
        );
        assert_eq!(
            status_of(c.identify(cns::NAMESPACE, 3).await),
            Status::INVALID_NAMESPACE
        );
        assert_eq!(
            status_of(c.identify(cns::NS_DESCRIPTORS, 9).await),
            Status::INVALID_NAMESPACE
        );
        assert_eq!(status_of(c.identify(0x42, 0).await), Status::INVALID_FIELD);
        // Log pages.
        let fw = c.get_log_page(lid::FIRMWARE_SLOT, 0, 0, 512).await.unwrap();
        assert_eq!(fw[0], 1);
        assert_eq!(&fw[8..13], env!("CARGO_PKG_VERSION").as_bytes());
        let ch = c.get_log_page(lid::CHANGED_NS, 0, 0, 4096).await.unwrap();
        assert!(ch.iter().all(|&b| b == 0));
        let fx = c
            .get_log_page(lid::COMMANDS_EFFECTS, 0, 0, 4096)
            .await
            .unwrap();
        assert_eq!(u32le(&fx, admin::IDENTIFY as usize * 4) & 1, 1);
        assert_eq!(
            u32le(&fx, 1024 + 4) & 3,
            3,
            "write: supported, changes content"
        );
        // An error lands in the error log.
        let _ = c.identify(0x42, 0).await;
        let el = c.get_log_page(lid::ERROR, 0, 0, 64).await.unwrap();
        assert!(u64le(&el, 0) >= 1, "error count");
        assert_eq!(u16le(&el, 12) >> 1, Status::INVALID_FIELD.0);
        assert_eq!(
            status_of(c.get_log_page(lid::FIRMWARE_SLOT, 0, 1024, 4).await),
            Status::INVALID_FIELD
        );
        assert_eq!(
            status_of(c.get_log_page(0x70, 0, 0, 1024).await),
            Status::INVALID_LOG_PAGE
        );
        // Features.
        c.set_features(0x0F, 15_000, None).await.unwrap();
        assert_eq!(c.get_features(0x0F, 0).await.unwrap().cqe.dw0, 15_000);
        // No write cache to turn off (tests/write_cache.rs has one).
        assert_eq!(
            status_of(c.set_features(0x06, 0, None).await),
            Status::INVALID_FIELD
        );
        assert_eq!(c.get_features(0x06, 0).await.unwrap().cqe.dw0, 0);
        c.set_features(0x04, 350, None).await.unwrap();
        assert_eq!(c.get_features(0x04, 0).await.unwrap().cqe.dw0, 350);
        c.set_features(0x0B, 0x100, None).await.unwrap();
        assert_eq!(c.get_features(0x0B, 0).await.unwrap().cqe.dw0, 0x100);
        // Current values, as a fresh controller has them (NVMe Base 2.0
        // §5.27.1): arbitration 0, power state 0, error recovery 0, and
        // Number of Queues 0-based in both halves: --max-io-queues 8.
        let dw0 = |f: u8| {
            let c = &c;
            async move { c.get_features(f, 0).await.unwrap().cqe.dw0 }
        };
        assert_eq!(dw0(0x01).await, 0);
        assert_eq!(dw0(0x02).await, 0);
        assert_eq!(dw0(0x05).await, 0);
        assert_eq!(dw0(0x07).await, 0x0007_0007);
        // Each holds what was set; Number of Queues what was granted.
        c.set_features(0x01, 0x0302_0103, None).await.unwrap();
        assert_eq!(dw0(0x01).await, 0x0302_0103);
        c.set_features(0x05, 40, None).await.unwrap();
        assert_eq!(dw0(0x05).await, 40);
        assert_eq!(c.set_number_of_queues(3).await.unwrap(), 3);
        assert_eq!(dw0(0x07).await, 0x0002_0002);
        // SEL 1 (default) is still the fresh value.
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin::GET_FEATURES)
            .set_cdw(10, (1 << 8) | 0x05);
        assert_eq!(c.admin.submit(sqe, None, 0).await.unwrap().cqe.dw0, 0);
        let hid = c.get_features_data(0x81, 1, 16).await.unwrap();
        assert_eq!(hid.data, nvmf_tpc::host::DEFAULT_HOSTID.to_vec());
        assert_eq!(
            status_of(c.get_features_data(0x81, 0, 16).await),
            Status::INVALID_FIELD
        );
        assert_eq!(
            status_of(c.get_features(0x55, 0).await),
            Status::INVALID_FIELD
        );
        assert_eq!(
            status_of(c.set_features(0x02, 3, None).await),
            Status::INVALID_FIELD
        );
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin::SET_FEATURES)
            .set_cdw(10, (1 << 31) | 0x01);
        assert_eq!(
            status_of(c.admin.submit(sqe, None, 0).await),
            Status::FEATURE_NOT_SAVEABLE
        );
        // Abort answers "not aborted"; AERs stay outstanding up to the limit.
        let mut sqe = Sqe::default();
        sqe.set_opcode(admin::ABORT);
        assert_eq!(c.admin.submit(sqe, None, 0).await.unwrap().cqe.dw0 & 1, 1);
        let mut aers = Vec::new();
        for _ in 0..4 {
            let q = c.admin.clone();
            aers.push(glommio::spawn_local(async move {
                let mut s = Sqe::default();
                s.set_opcode(admin::ASYNC_EVENT_REQUEST);
                q.submit(s, None, 0).await
            }));
        }
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let mut s = Sqe::default();
        s.set_opcode(admin::ASYNC_EVENT_REQUEST);
        assert_eq!(
            status_of(c.admin.submit(s, None, 0).await),
            Status::ASYNC_EVENT_LIMIT_EXCEEDED
        );
        // The admin queue keeps working with AERs outstanding.
        c.keep_alive().await.unwrap();
        // Shutdown reports SHST complete.
        c.shutdown().await.unwrap();
        drop(aers);
        nguid
    });
    // NGUIDs are stable across restarts.
    drop(t);
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:8M"]);
    let addr = t.addr;
    let again = run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        c.identify(cns::NS_DESCRIPTORS, 1).await.unwrap()[16..32].to_vec()
    });
    assert_eq!(nguid, again);
}

fn cores_of_queues(log: &str, cntlid: u16) -> std::collections::BTreeSet<String> {
    let needle = format!("controller {cntlid}: I/O queue ");
    log.lines()
        .filter(|l| l.contains(&needle) && l.contains("connected on core"))
        .filter_map(|l| {
            l.split("core ")
                .nth(1)
                .map(|s| s.split_whitespace().next().unwrap().to_string())
        })
        .collect()
}

#[test]
fn io_queues_across_cores_and_teardown() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "2"]);
    let addr = t.addr;
    const QUEUES: u16 = 16;
    let cntlid = run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        c.set_number_of_queues(QUEUES).await.unwrap();
        let mut qs: Vec<IoQueue> = Vec::new();
        for qid in 1..=QUEUES {
            qs.push(c.connect_io_queue(qid).await.unwrap());
        }
        // Data written on one queue reads back on every other (RAM is shared by cores).
        for (i, q) in qs.iter().enumerate() {
            let data = vec![i as u8 + 1; 4096];
            q.write(1, i as u64, &data, 4096, false).await.unwrap();
        }
        for (i, q) in qs.iter().enumerate() {
            let j = (i + 1) % qs.len();
            let back = q.read(1, j as u64, 1, 4096).await.unwrap();
            assert!(back.iter().all(|&b| b == j as u8 + 1));
        }
        // SMART counts I/O from every core.
        let smart = c
            .get_log_page(lid::SMART, 0xFFFF_FFFF, 0, 512)
            .await
            .unwrap();
        let writes = u128::from_le_bytes(smart[80..96].try_into().unwrap());
        let reads = u128::from_le_bytes(smart[64..80].try_into().unwrap());
        assert_eq!((reads, writes), (QUEUES as u128, QUEUES as u128));
        // Disabling the controller closes every I/O queue on every core.
        c.property_set(property::CC, false, 0).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while qs.iter().any(|q| !q.queue.is_closed()) {
            assert!(
                Instant::now() < deadline,
                "I/O queues still open after CC.EN=0"
            );
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        let cs = c.property_get(property::CSTS, false).await.unwrap() as u32;
        assert_eq!(cs & csts::RDY, 0);
        c.cntlid
    });
    // The log arrives through a pipe: wait for all 16 connect lines.
    let needle = format!("controller {cntlid}: I/O queue ");
    let deadline = Instant::now() + Duration::from_secs(5);
    let connected = |log: &str| {
        log.lines()
            .filter(|l| l.contains(&needle) && l.contains("connected on core"))
            .count()
    };
    while connected(&t.log()) < QUEUES as usize && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cores = cores_of_queues(&t.log(), cntlid);
    assert_eq!(
        cores.len(),
        2,
        "queues landed on cores {cores:?}:\n{}",
        t.log()
    );
}

/// An I/O queue may join only an enabled controller: before CC.EN=1, and
/// after the host disabled it (a reset), its Connect is refused (SPDK
/// answers the same; the queue would otherwise join a controller whose
/// queues are being torn down).
#[test]
fn io_queues_join_only_an_enabled_controller() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:1M", "--cores", "2"]);
    let addr = t.addr;
    run(move || async move {
        let cfg = HostConfig::new(addr, NQN);
        let (admin_q, cntlid) = Queue::connect(&cfg, 0, 0xFFFF).await.unwrap();
        for qid in 1..=4 {
            assert_eq!(
                status_of(Queue::connect(&cfg, qid, cntlid).await),
                Status::CONNECT_INVALID_PARAMETERS
            );
        }
        drop(admin_q);
        let c = Controller::connect(cfg.clone()).await.unwrap();
        c.set_number_of_queues(4).await.unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        q.read(1, 0, 1, 4096).await.unwrap();
        c.property_set(property::CC, false, 0).await.unwrap();
        for qid in 2..=4 {
            assert_eq!(
                status_of(c.connect_io_queue(qid).await),
                Status::CONNECT_INVALID_PARAMETERS
            );
        }
    });
}

/// An I/O queue connecting on another core than its controller, while the
/// host resets the controller: the owner accepted the queue, and its reply
/// is held (fault injection) until the reset's teardown has gone out. The
/// queue must not come up on the reset controller (its teardown was dropped
/// on the queue's core, which had not registered the queue yet).
#[test]
fn a_queue_connecting_across_cores_cannot_miss_a_reset() {
    let t = Target::start_env(
        &["--subsystem", NQN, "--namespace", "ram:1M", "--cores", "2"],
        &[("NVMF_TPC_FAULT_ATTACH_REPLY_MS", "1000")],
    );
    let addr = t.addr;
    let log = t.stderr.clone();
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        c.set_number_of_queues(8).await.unwrap();
        let c = std::rc::Rc::new(c);
        // Connections land on either core; those on the other core than
        // the controller's are the ones whose reply is held.
        let mut tasks = Vec::new();
        for qid in 1..=8u16 {
            let c = c.clone();
            tasks.push(glommio::spawn_local(async move {
                c.connect_io_queue(qid).await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.lock().unwrap().contains("attach reply for controller") {
            assert!(Instant::now() < deadline, "no queue connected across cores");
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        // The reset, while at least one reply is held.
        c.property_set(property::CC, false, 0).await.unwrap();
        for task in tasks {
            if let Ok(q) = task.await {
                // A queue that won the race must be gone with the reset.
                let r = q.read(1, 0, 1, 4096).await;
                assert!(
                    r.is_err(),
                    "a queue is serving I/O after its controller's reset"
                );
            }
        }
    });
}

#[test]
fn io_errors_reach_the_controller_error_log_from_every_core() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:1M", "--cores", "2"]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        c.set_number_of_queues(8).await.unwrap();
        for qid in 1..=8u16 {
            let q = c.connect_io_queue(qid).await.unwrap();
            assert_eq!(
                status_of(q.read(1, 1 << 20, 1, 4096).await),
                Status::LBA_OUT_OF_RANGE
            );
        }
        // Messages to the owner core are asynchronous: allow them to land.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let el = c.get_log_page(lid::ERROR, 0, 0, 64 * 64).await.unwrap();
            let sqids: std::collections::BTreeSet<u16> = el
                .chunks(64)
                .filter(|e| u64le(e, 0) != 0)
                .map(|e| u16le(e, 8))
                .collect();
            if sqids == (1..=8).collect() {
                let e = &el[..64];
                assert_eq!(u16le(e, 12) >> 1, Status::LBA_OUT_OF_RANGE.0);
                assert_eq!(u32le(e, 24), 1, "nsid");
                assert_eq!(u64le(e, 16), 1 << 20, "lba");
                break;
            }
            assert!(Instant::now() < deadline, "error log has sqids {sqids:?}");
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    });
}
