//! One client core: a pinned glommio executor with its own controller and
//! I/O queues, `qd` tasks per queue each looping submit → await → record,
//! and a ticker that hands the core's counters to the main thread at every
//! event of the shared timeline (once per second, not per I/O).

use super::stats::Interval;
use super::{Msg, Plan, Rw, Shared, Timeline};
use crate::host::{Controller, HostError, IoQueue};
use glommio::timer::sleep;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinct error descriptions kept per core; more are counted as "other".
const ERROR_KINDS_MAX: usize = 16;
/// How long in-flight commands may take to finish once the run ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting core looks at the abort flag.
const ABORT_CHECK: Duration = Duration::from_millis(100);

/// What a core learnt while connecting.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub cntlid: u16,
    /// Namespace size in blocks and block size in bytes.
    pub nsze: u64,
    pub block_size: u32,
    pub mdts: Option<u32>,
    /// Entries of each I/O queue after the controller's CAP.MQES clamp.
    pub io_queue_size: u16,
}

/// Where and how the I/O tasks issue commands; the same on every core.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub nsid: u32,
    pub block_size: u32,
    /// Blocks per I/O.
    pub io_blocks: u64,
    /// Number of `bs`-sized, aligned places in the range.
    pub places: u64,
    /// I/O tasks per queue (`--qd`, capped by the queue size).
    pub depth: u16,
}

impl Shape {
    /// Checks `--bs`, `--range` and `--qd` against what the target reported.
    pub fn new(plan: &Plan, g: &Geometry) -> Result<Shape, String> {
        let bs = plan.bs as u64;
        let blk = u64::from(g.block_size);
        if !bs.is_multiple_of(blk) {
            return Err(format!(
                "--bs {bs}: not a multiple of namespace {}'s {blk}-byte blocks",
                plan.nsid
            ));
        }
        if let Some(m) = g.mdts {
            if bs > u64::from(m) {
                return Err(format!(
                    "--bs {bs}: above the target's largest transfer (MDTS) of {m} bytes"
                ));
            }
        }
        let ns_bytes = g.nsze.saturating_mul(blk);
        let range = plan.range.unwrap_or(ns_bytes).min(ns_bytes);
        let places = range / bs;
        if places == 0 {
            return Err(format!(
                "range of {range} bytes holds no {bs}-byte I/O (namespace {}: {ns_bytes} bytes)",
                plan.nsid
            ));
        }
        Ok(Shape {
            nsid: plan.nsid,
            block_size: g.block_size,
            io_blocks: bs / blk,
            places,
            depth: plan.qd.min(g.io_queue_size.saturating_sub(1)).max(1),
        })
    }
}

/// Starts client core `core` on CPU `cpu`; it reports through `tx`.
pub fn spawn(
    core: usize,
    cpu: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    tx: Sender<Msg>,
) -> Result<glommio::ExecutorJoinHandle<()>, String> {
    let mut b = LocalExecutorBuilder::new(Placement::Fixed(cpu)).name(&format!("perf-{core}"));
    if !plan.idle_poll.is_zero() {
        b = b.spin_before_park(plan.idle_poll);
    }
    b.spawn(move || async move {
        let errors = RefCell::new(BTreeMap::new());
        let failure = run(core, &plan, &shared, &tx, &errors).await.err();
        let _ = tx.send(Msg::Done {
            core,
            errors: errors.into_inner(),
            failure,
        });
    })
    .map_err(|e| format!("cannot start a client executor on CPU {cpu}: {e}"))
}

/// State the I/O tasks of one core share (single-threaded).
struct Core {
    stop: Cell<bool>,
    iv: RefCell<Interval>,
    /// Next place of a sequential workload.
    cursor: Cell<u64>,
    errors: RefCell<BTreeMap<String, u64>>,
    /// A queue died: why.
    fatal: RefCell<Option<String>>,
}

impl Core {
    fn error(&self, what: String) {
        self.iv.borrow_mut().errors += 1;
        let mut m = self.errors.borrow_mut();
        let key = if m.len() < ERROR_KINDS_MAX || m.contains_key(&what) {
            what
        } else {
            "other errors".to_string()
        };
        *m.entry(key).or_default() += 1;
    }
}

/// Connects, runs, disconnects. Target errors are counted into `errors`;
/// a failure (no connection, a dead queue) is the `Err`.
async fn run(
    core: usize,
    plan: &Plan,
    shared: &Shared,
    tx: &Sender<Msg>,
    errors: &RefCell<BTreeMap<String, u64>>,
) -> Result<(), String> {
    let addr = plan.host.addr;
    let ctrl = Controller::connect(plan.host.clone())
        .await
        .map_err(|e| format!("core {core}: connect to {addr} ({}): {e}", plan.host.subnqn))?;
    ctrl.start_keep_alive();
    let mut queues = Vec::new();
    let r = session(core, plan, shared, tx, &ctrl, &mut queues, errors).await;
    for q in &queues {
        q.queue.close().await;
    }
    drop(queues);
    if let Err(e) = ctrl.shutdown().await {
        if r.is_ok() {
            log::warn!("core {core}: controller shutdown: {e}");
        }
    }
    r
}

async fn session(
    core: usize,
    plan: &Plan,
    shared: &Shared,
    tx: &Sender<Msg>,
    ctrl: &Controller,
    queues: &mut Vec<IoQueue>,
    errors: &RefCell<BTreeMap<String, u64>>,
) -> Result<(), String> {
    let (geo, shape) = setup(core, plan, ctrl, queues).await?;
    let _ = tx.send(Msg::Ready { core, geo });
    let Some(tl) = wait_timeline(shared).await else {
        return Ok(());
    };
    if plan.idle.is_some() {
        idle_ticks(core, tl, shared, tx).await;
        return Ok(());
    }
    let st = Rc::new(Core {
        stop: Cell::new(false),
        iv: RefCell::new(Interval::default()),
        cursor: Cell::new(core as u64 * (shape.places / plan.cpus.len() as u64)),
        errors: RefCell::new(BTreeMap::new()),
        fatal: RefCell::new(None),
    });
    let tasks = spawn_load(core, plan, shape, &st, queues);
    ticker(core, tl, shared, &st, tx).await;
    st.stop.set(true);
    drain(core, tasks).await;
    *errors.borrow_mut() = std::mem::take(&mut *st.errors.borrow_mut());
    let fatal = st.fatal.borrow_mut().take();
    match fatal {
        Some(f) => Err(format!("core {core}: {f}")),
        None => Ok(()),
    }
}

/// The controller's queues and the namespace's geometry, checked against
/// what the run asks.
async fn setup(
    core: usize,
    plan: &Plan,
    ctrl: &Controller,
    queues: &mut Vec<IoQueue>,
) -> Result<(Geometry, Shape), String> {
    let ctx = |what: &str, e: HostError| format!("core {core}: {what}: {e}");
    let granted = ctrl
        .set_number_of_queues(plan.queues)
        .await
        .map_err(|e| ctx("Set Features (Number of Queues)", e))?;
    if granted < plan.queues {
        return Err(format!(
            "core {core}: the target allows {granted} I/O queue(s) per controller; --queues {} asked",
            plan.queues
        ));
    }
    let (nsze, block_size) = ctrl
        .namespace_geometry(plan.nsid)
        .await
        .map_err(|e| ctx(&format!("Identify Namespace {}", plan.nsid), e))?;
    if nsze == 0 {
        return Err(format!(
            "core {core}: namespace {} is not active (size 0)",
            plan.nsid
        ));
    }
    for qid in 1..=plan.queues {
        let q = ctrl
            .connect_io_queue(qid)
            .await
            .map_err(|e| ctx(&format!("connect I/O queue {qid}"), e))?;
        queues.push(q);
    }
    let geo = Geometry {
        cntlid: ctrl.cntlid,
        nsze,
        block_size,
        mdts: ctrl.mdts_bytes,
        io_queue_size: ctrl.io_queue_size,
    };
    let shape = Shape::new(plan, &geo).map_err(|e| format!("core {core}: {e}"))?;
    Ok((geo, shape))
}

/// Every core waits for the main thread's timeline, so they all start and
/// tick at the same instants. None if the run was aborted first.
async fn wait_timeline(shared: &Shared) -> Option<&Timeline> {
    loop {
        if let Some(tl) = shared.timeline.get() {
            return Some(tl);
        }
        if shared.abort.load(Ordering::Relaxed) {
            return None;
        }
        sleep(Duration::from_millis(1)).await;
    }
}

/// Connected and idle: only keep alive runs until the end.
async fn idle_ticks(core: usize, tl: &Timeline, shared: &Shared, tx: &Sender<Msg>) {
    for (idx, &at) in tl.events.iter().enumerate() {
        if !sleep_until(at, shared, None).await {
            break;
        }
        let _ = tx.send(Msg::Tick {
            core,
            idx,
            iv: Box::default(),
        });
    }
}

/// One I/O loop per slot of every queue's depth.
fn spawn_load(
    core: usize,
    plan: &Plan,
    shape: Shape,
    st: &Rc<Core>,
    queues: &[IoQueue],
) -> Vec<glommio::Task<()>> {
    let pattern: Rc<[u8]> = (0..plan.bs)
        .map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7])
        .collect();
    let mut tasks = Vec::new();
    for (qi, q) in queues.iter().enumerate() {
        for slot in 0..shape.depth {
            let seed = ((core as u64) << 40) ^ ((qi as u64) << 20) ^ u64::from(slot);
            tasks.push(glommio::spawn_local(io_loop(
                st.clone(),
                q.clone(),
                shape,
                plan.rw,
                plan.mix,
                plan.bs,
                pattern.clone(),
                seed,
            )));
        }
    }
    tasks
}

/// Waits for the I/O loops to see the stop, up to `DRAIN_TIMEOUT`.
async fn drain(core: usize, tasks: Vec<glommio::Task<()>>) {
    let drained = futures_lite::future::or(
        async {
            for t in tasks {
                t.await;
            }
            true
        },
        async {
            sleep(DRAIN_TIMEOUT).await;
            false
        },
    )
    .await;
    if !drained {
        log::warn!(
            "core {core}: commands still in flight {} s after the end; closing",
            DRAIN_TIMEOUT.as_secs()
        );
    }
}

/// Sleeps until `at`; false when the run was aborted (by the main thread or,
/// with `st`, by a dead queue of this core) first.
async fn sleep_until(at: Instant, shared: &Shared, st: Option<&Core>) -> bool {
    loop {
        if shared.abort.load(Ordering::Relaxed) || st.is_some_and(|s| s.fatal.borrow().is_some()) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        sleep((at - now).min(ABORT_CHECK)).await;
    }
}

/// At every event of the timeline, hands this core's counters over.
async fn ticker(core: usize, tl: &Timeline, shared: &Shared, st: &Core, tx: &Sender<Msg>) {
    for (idx, &at) in tl.events.iter().enumerate() {
        if !sleep_until(at, shared, Some(st)).await {
            return;
        }
        // A new interval (and its histogram) is allocated once per tick.
        let iv = std::mem::take(&mut *st.iv.borrow_mut());
        if tx
            .send(Msg::Tick {
                core,
                idx,
                iv: Box::new(iv),
            })
            .is_err()
        {
            return;
        }
    }
}

/// xorshift64*: a fast generator, good enough to pick LBAs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // SplitMix64 of the seed, so that neighbouring seeds diverge.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn describe(read: bool, e: &HostError) -> String {
    let op = if read { "read" } else { "write" };
    match e {
        HostError::Status(s, _) => format!("{op}: status {s}"),
        e => format!("{op}: {e}"),
    }
}

/// One in-flight slot: submit, wait, record, again, until the core stops.
/// Buffers are allocated once: reads reuse theirs through `read_into`,
/// writes all send the core's pattern.
#[allow(clippy::too_many_arguments)]
async fn io_loop(
    st: Rc<Core>,
    q: IoQueue,
    shape: Shape,
    rw: Rw,
    mix: u8,
    bs: usize,
    pattern: Rc<[u8]>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let mut rbuf = if rw.reads() {
        vec![0u8; bs]
    } else {
        Vec::new()
    };
    while !st.stop.get() {
        let read = match rw {
            Rw::Read | Rw::RandRead => true,
            Rw::Write | Rw::RandWrite => false,
            Rw::RandRw => rng.below(100) < u64::from(mix),
        };
        let place = if rw.random() {
            rng.below(shape.places)
        } else {
            let c = st.cursor.get();
            st.cursor.set(if c + 1 >= shape.places { 0 } else { c + 1 });
            c
        };
        let slba = place * shape.io_blocks;
        let t = Instant::now();
        let res = if read {
            match q
                .read_into(
                    shape.nsid,
                    slba,
                    std::mem::take(&mut rbuf),
                    shape.block_size,
                )
                .await
            {
                Ok(d) => {
                    let got = d.len();
                    rbuf = d;
                    if got == bs {
                        Ok(())
                    } else {
                        Err(format!("read: short read, {got} of {bs} bytes"))
                    }
                }
                Err(e) => {
                    rbuf = vec![0u8; bs];
                    Err(describe(true, &e))
                }
            }
        } else {
            q.write(shape.nsid, slba, &pattern, shape.block_size, false)
                .await
                .map(|_| ())
                .map_err(|e| describe(false, &e))
        };
        let ns = t.elapsed().as_nanos() as u64;
        if st.stop.get() {
            // Completed after the end: not part of the measurement.
            break;
        }
        match res {
            Ok(()) => st.iv.borrow_mut().record(read, bs as u64, ns),
            Err(what) => {
                st.error(what);
                if let Some(e) = q.queue.error() {
                    let mut f = st.fatal.borrow_mut();
                    if f.is_none() {
                        *f = Some(format!("I/O queue {} failed: {e}", q.queue.qid()));
                    }
                    st.stop.set(true);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn rng_is_uniform_enough() {
        let mut r = Rng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[r.below(10) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_ne!(Rng::new(1).next(), Rng::new(2).next());
    }
}
