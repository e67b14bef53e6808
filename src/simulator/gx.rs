//! A GX device's Modbus-TCP server, simulated: the register map of
//! [`RegisterList`], unit ids that select a service instance, exceptions as
//! the real server raises them (0x01 unknown function, 0x02 unmapped address
//! or a write, 0x03 bad quantity, 0x0A no such device), 0 for values a device
//! lacks, 0xFFFF for reserved registers. Animated, every value is derived from
//! one simulated site ([`SiteModel`]) on a simulated clock, so the values obey
//! the energy balance; not animated, they are the fixed (golden) values.
//!
//! Faults on request, through [`SimHandle`]: a unit offline, delayed replies,
//! dropped connections, 0x02 for an address range.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use super::site::SiteModel;
use crate::config::ModbusClass;
use crate::registers::decode::{Decoded, decode, encode_number, encode_text};
use crate::registers::{ModbusType, Register, RegisterList};

/// What the simulated GX has connected.
#[derive(Debug, Clone)]
pub struct GxSimOptions {
    /// Unit id → the service answering on it.
    pub units: Vec<(u8, ModbusClass)>,
    /// Whether values move over time (off: fixed values, for exact tests).
    pub animate: bool,
    /// Simulated seconds per real second while animated: 1 is real time,
    /// the demo's 360 shows six hours a minute, 0 freezes the site.
    pub time_scale: f64,
    /// Simulated time of day at start, in hours (0 to 24).
    pub start_hour: f64,
    /// The bank's state of charge at start, %.
    pub start_soc: f64,
}

impl Default for GxSimOptions {
    /// A Cerbo GX with a SmartShunt on VE.Direct 1 (unit 226), an MPPT on
    /// VE.Direct 2 (224) and a MultiPlus on VE.Bus (227).
    fn default() -> Self {
        Self {
            units: vec![
                (100, ModbusClass::System),
                (226, ModbusClass::Battery),
                (224, ModbusClass::SolarCharger),
                (227, ModbusClass::VeBus),
            ],
            animate: true,
            time_scale: 1.0,
            start_hour: 12.0,
            start_soc: 87.3,
        }
    }
}

/// The GX firmware the simulator reports (registers 834–835): v3.42.
pub(crate) const SIM_FIRMWARE: [u16; 2] = [0x0342, 0];

/// Shared state: configuration, faults and counters.
#[derive(Debug)]
struct SimState {
    list: &'static RegisterList,
    units: HashMap<u8, ModbusClass>,
    /// The simulated site when animated; `None`: the fixed values.
    site: Option<Mutex<SiteModel>>,
    /// Simulated seconds per real second.
    time_scale: f64,
    started: Instant,
    offline: Mutex<HashSet<u8>>,
    holes: Mutex<Vec<(u16, u16)>>,
    delay_ms: AtomicU64,
    /// Bumped to drop every open connection at its next request.
    generation: Arc<AtomicU64>,
    requests: AtomicU64,
}

/// Controls a running simulator; stops it when dropped.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<SimState>,
    cancel: CancellationToken,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl SimHandle {
    /// Where the simulator listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes a unit offline (exception 0x0A) or back online.
    pub fn set_offline(&self, unit: u8, offline: bool) {
        let mut set = self.state.offline.lock().unwrap_or_else(|p| p.into_inner());
        if offline {
            set.insert(unit);
        } else {
            set.remove(&unit);
        }
    }

    /// Delays every reply by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Drops every open connection at its next request.
    pub fn drop_connections(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Answers 0x02 for any read touching `start..=end`, like older firmware
    /// with holes in its map.
    pub fn add_hole(&self, start: u16, end: u16) {
        self.state
            .holes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((start, end));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.state
            .offline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.state
            .holes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.set_delay(Duration::ZERO);
    }

    /// Read requests answered or refused so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The value a read of `path` of `class` returns now, as a client decodes
    /// it (rounded to the register's resolution); `None` for paths the
    /// simulated device does not have (the GX serves 0).
    pub fn served(&self, class: ModbusClass, path: &str) -> Option<f64> {
        let register = self.state.list.find(class.service(), path, None)?;
        let site = self.state.site_now();
        number(site.as_ref(), class, path)?;
        match decode(register, &self.state.words(site.as_ref(), class, register)) {
            Ok(Decoded::Number(v)) => Some(v),
            _ => None,
        }
    }

    /// The simulated site now (time of day, SOC, flows); `None` when not
    /// animated.
    pub(crate) fn site(&self) -> Option<SiteModel> {
        self.state.site_now()
    }

    /// Stops the server and closes its connections.
    pub fn stop(self) {}
}

impl SimState {
    /// The site stepped to now, when animated: whole real seconds times the
    /// time scale, so values hold still within a poll. One snapshot serves a
    /// whole read, so a block's values belong to one instant.
    fn site_now(&self) -> Option<SiteModel> {
        let site = self.site.as_ref()?;
        let clock_s = self.started.elapsed().as_secs() as f64 * self.time_scale;
        let mut site = site.lock().unwrap_or_else(|p| p.into_inner());
        site.advance_to(clock_s);
        Some(site.clone())
    }

    /// The words of one register as the GX would serve them now.
    fn words(&self, site: Option<&SiteModel>, class: ModbusClass, register: &Register) -> Vec<u16> {
        match register.ty {
            ModbusType::Reserved(n) => vec![0xFFFF; usize::from(n)],
            ModbusType::Str(n) => encode_text(
                n,
                if register.path == "/Serial" {
                    "c0619ab1e5f7"
                } else {
                    ""
                },
            ),
            _ if class == ModbusClass::System && register.address == 834 => SIM_FIRMWARE.to_vec(),
            _ if class == ModbusClass::System && register.address == 830 => {
                let now = chrono::Utc::now().timestamp().max(0) as f64;
                encode_number(register.ty, 1.0, now)
            }
            ty => {
                let value = number(site, class, &register.path).unwrap_or(0.0);
                encode_number(ty, register.scale, value)
            }
        }
    }

    fn class_of(&self, unit: u8) -> Option<ModbusClass> {
        if unit == 0 {
            // The system service has device instance 0: unit 0 reaches it too.
            return self
                .units
                .get(&100)
                .copied()
                .filter(|c| *c == ModbusClass::System);
        }
        self.units.get(&unit).copied()
    }

    /// Answers one read like the GX's server.
    fn read(&self, unit: u8, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        if count == 0 || count > 125 {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let first = self
            .list
            .covering(start)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        let offline = self
            .offline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&unit);
        let class = match self.class_of(unit) {
            Some(class) if !offline && class.service() == first.service => class,
            _ => return Err(ExceptionCode::GatewayPathUnavailable),
        };
        let end = u32::from(start) + u32::from(count);
        let holes = self.holes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if holes
            .iter()
            .any(|(lo, hi)| u32::from(*lo) < end && *hi >= start)
        {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let site = self.site_now();
        let mut words = Vec::with_capacity(usize::from(count));
        let mut address = u32::from(start);
        while address < end {
            let a = u16::try_from(address).map_err(|_| ExceptionCode::IllegalDataAddress)?;
            let register = self
                .list
                .covering(a)
                .filter(|r| r.service == first.service)
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            let all = self.words(site.as_ref(), class, register);
            let from = usize::from(a - register.address);
            let take = (all.len() - from).min(usize::try_from(end - address).unwrap_or(usize::MAX));
            words.extend_from_slice(&all[from..from + take]);
            address += take as u32;
        }
        Ok(words)
    }
}

/// The D-Bus value of `path` of `class`: from the site when animated, else
/// the fixed value; `None` for paths the simulated devices do not have.
fn number(site: Option<&SiteModel>, class: ModbusClass, path: &str) -> Option<f64> {
    match site {
        Some(site) => site.value(class, path),
        None => fixed_number(class, path),
    }
}

/// The fixed (golden) values, for exact tests: what the animation used to
/// serve at its start, unchanged. Not a balanced site (PV 1200 W, AC loads
/// 850 W and the bank discharging 428 W at once); tests pin the words.
fn fixed_number(class: ModbusClass, path: &str) -> Option<f64> {
    let battery_current: f64 = -8.2;
    let battery_voltage = 52.41 + 0.02 * battery_current;
    let soc = 87.3;
    let pv_power = 1200.0;
    let load = 850.0;
    let value = match (class, path) {
        (ModbusClass::System, "/Ac/Consumption/L1/Power") => load,
        (ModbusClass::System, "/Ac/ActiveIn/Source") => 240.0,
        (ModbusClass::System, "/Dc/Battery/Voltage") => battery_voltage,
        (ModbusClass::System, "/Dc/Battery/Current") => battery_current,
        (ModbusClass::System, "/Dc/Battery/Power") => battery_voltage * battery_current,
        (ModbusClass::System, "/Dc/Battery/Soc") => soc,
        (ModbusClass::System, "/Dc/Battery/State") => 2.0,
        (ModbusClass::System, "/Dc/Battery/ConsumedAmphours") => -(100.0 - soc) * 2.5,
        (ModbusClass::System, "/Dc/Battery/TimeToGo") => 86_400.0,
        (ModbusClass::System, "/Dc/Pv/Power") => pv_power,
        (ModbusClass::System, "/Dc/Pv/Current") => pv_power / 52.6,
        (ModbusClass::System, "/Dc/System/Power") => 35.0,
        (ModbusClass::Battery, "/Dc/0/Voltage") => battery_voltage,
        (ModbusClass::Battery, "/Dc/0/Current") => battery_current,
        (ModbusClass::Battery, "/Dc/0/Power") => (battery_voltage * battery_current).round(),
        (ModbusClass::Battery, "/ConsumedAmphours") => -(100.0 - soc) * 2.5,
        (ModbusClass::Battery, "/Soc") => soc,
        (ModbusClass::Battery, "/TimeToGo") => 86_400.0,
        (ModbusClass::Battery, "/History/ChargeCycles") => 42.0,
        (ModbusClass::Battery, "/History/DeepestDischarge") => -180.0,
        (ModbusClass::SolarCharger, "/Dc/0/Voltage") => 52.6,
        (ModbusClass::SolarCharger, "/Dc/0/Current") => pv_power / 52.6,
        (ModbusClass::SolarCharger, "/Mode") => 1.0,
        (ModbusClass::SolarCharger, "/State") => 3.0,
        (ModbusClass::SolarCharger, "/Pv/V") => 98.4,
        (ModbusClass::SolarCharger, "/Pv/I") => pv_power / 98.4,
        (ModbusClass::SolarCharger, "/History/Daily/0/Yield") => 3.41,
        (ModbusClass::SolarCharger, "/History/Daily/0/MaxPower") => 1500.0,
        (ModbusClass::SolarCharger, "/History/Daily/1/Yield") => 5.12,
        (ModbusClass::SolarCharger, "/History/Daily/1/MaxPower") => 1610.0,
        (ModbusClass::SolarCharger, "/ErrorCode") => 0.0,
        (ModbusClass::SolarCharger, "/Yield/Power") => pv_power,
        (ModbusClass::SolarCharger, "/Yield/User") => 1234.5,
        (ModbusClass::SolarCharger, "/MppOperationMode") => 2.0,
        (ModbusClass::VeBus, "/Ac/NumberOfPhases") => 1.0,
        (ModbusClass::VeBus, "/Ac/Out/L1/V") => 230.1,
        (ModbusClass::VeBus, "/Ac/Out/L1/I") => load / 230.1,
        (ModbusClass::VeBus, "/Ac/Out/L1/F") => 50.0,
        (ModbusClass::VeBus, "/Ac/Out/L1/P") => load,
        (ModbusClass::VeBus, "/Ac/ActiveIn/ActiveInput") => 240.0,
        (ModbusClass::VeBus, "/Dc/0/Voltage") => battery_voltage,
        (ModbusClass::VeBus, "/Dc/0/Current") => -load / battery_voltage,
        (ModbusClass::VeBus, "/Soc") => soc,
        (ModbusClass::VeBus, "/State") => 9.0,
        (ModbusClass::VeBus, "/Mode") => 3.0,
        _ => return None,
    };
    Some(value)
}

/// The tokio-modbus service: one per connection, all sharing the state.
#[derive(Debug, Clone)]
struct GxService {
    state: Arc<SimState>,
}

impl tokio_modbus::server::Service for GxService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            state.requests.fetch_add(1, Ordering::SeqCst);
            let delay = state.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            match req.request {
                Request::ReadHoldingRegisters(start, count) => state
                    .read(req.slave, start, count)
                    .map(Response::ReadHoldingRegisters),
                Request::ReadInputRegisters(start, count) => state
                    .read(req.slave, start, count)
                    .map(Response::ReadInputRegisters),
                // Writes are refused as by a GX whose Modbus server is read-only.
                Request::WriteSingleRegister(..) | Request::WriteMultipleRegisters(..) => {
                    Err(ExceptionCode::IllegalDataAddress)
                }
                _ => Err(ExceptionCode::IllegalFunction),
            }
        })
    }
}

/// A connection that the simulator can cut: once the generation moves on,
/// the next read or write fails and the server closes the socket.
#[derive(Debug)]
struct Cuttable {
    inner: TcpStream,
    born: u64,
    generation: Arc<AtomicU64>,
}

impl Cuttable {
    fn check(&self) -> io::Result<()> {
        if self.generation.load(Ordering::SeqCst) == self.born {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "dropped by the simulator",
            ))
        }
    }
}

impl AsyncRead for Cuttable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                // A request arrived on a cut connection: close without a reply.
                this.check()
                    .map_or_else(|e| Poll::Ready(Err(e)), |()| Poll::Ready(Ok(())))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl SimState {
    /// A GX with `options`' devices, no fault, started now.
    fn new(options: GxSimOptions) -> Self {
        let site = options
            .animate
            .then(|| Mutex::new(SiteModel::new(options.start_hour, options.start_soc)));
        Self {
            list: RegisterList::victron(),
            units: options.units.into_iter().collect(),
            site,
            time_scale: options.time_scale.max(0.0),
            started: Instant::now(),
            offline: Mutex::new(HashSet::new()),
            holes: Mutex::new(Vec::new()),
            delay_ms: AtomicU64::new(0),
            generation: Arc::new(AtomicU64::new(0)),
            requests: AtomicU64::new(0),
        }
    }
}

/// Serves the simulated GX on `listener` until the handle is dropped.
pub fn start(listener: TcpListener, options: GxSimOptions) -> io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState::new(options));
    let cancel = CancellationToken::new();
    let server_state = Arc::clone(&state);
    let server_cancel = cancel.clone();
    tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = |stream: TcpStream, _peer: SocketAddr| {
            let state = Arc::clone(&server_state);
            async move {
                let _ = stream.set_nodelay(true);
                let transport = Cuttable {
                    inner: stream,
                    born: state.generation.load(Ordering::SeqCst),
                    generation: Arc::clone(&state.generation),
                };
                Ok(Some((GxService { state }, transport)))
            }
        };
        let on_error = |error: io::Error| tracing::debug!(%error, "Simulated GX connection ended.");
        tokio::select! {
            result = server.serve(&on_connected, on_error) => {
                if let Err(error) = result {
                    tracing::warn!(%error, "Simulated GX stopped listening.");
                }
            }
            () = server_cancel.cancelled() => {}
        }
    });
    Ok(SimHandle {
        addr,
        state,
        cancel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(animate: bool) -> SimState {
        SimState::new(GxSimOptions {
            animate,
            ..GxSimOptions::default()
        })
    }

    #[test]
    fn answers_like_the_gx() {
        let s = state(false);
        // Battery voltage 52.41 V - 0.02 × 8.2 A at scale 100.
        let words = s.read(226, 259, 1).unwrap();
        assert_eq!(words, vec![5225]);
        // Reserved registers read 0xFFFF; values a device lacks read 0.
        assert_eq!(s.read(100, 847, 3).unwrap(), vec![0xFFFF; 3]);
        assert_eq!(s.read(226, 260, 1).unwrap(), vec![0]);
        // The second word of an int32 is a valid start.
        assert_eq!(s.read(226, 257, 1).unwrap().len(), 1);
        assert_eq!(s.read(100, 834, 2).unwrap(), SIM_FIRMWARE.to_vec());
        assert_eq!(s.read(0, 840, 1).unwrap(), s.read(100, 840, 1).unwrap());
    }

    #[test]
    fn raises_the_gx_exceptions() {
        let s = state(false);
        assert_eq!(s.read(100, 840, 0), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(s.read(100, 840, 126), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(
            s.read(100, 3, 1),
            Err(ExceptionCode::GatewayPathUnavailable),
            "vebus register on the system unit"
        );
        assert_eq!(
            s.read(226, 840, 1),
            Err(ExceptionCode::GatewayPathUnavailable)
        );
        assert_eq!(
            s.read(99, 259, 1),
            Err(ExceptionCode::GatewayPathUnavailable)
        );
        assert_eq!(
            s.read(100, 65000, 1),
            Err(ExceptionCode::IllegalDataAddress)
        );
        // 920 onwards is not mapped: a block running into it is refused whole.
        assert!(s.read(100, 902, 18).is_ok());
        assert_eq!(s.read(100, 902, 19), Err(ExceptionCode::IllegalDataAddress));
        s.offline.lock().unwrap().insert(226);
        assert_eq!(
            s.read(226, 259, 1),
            Err(ExceptionCode::GatewayPathUnavailable)
        );
        s.holes.lock().unwrap().push((782, 783));
        assert_eq!(s.read(224, 771, 23), Err(ExceptionCode::IllegalDataAddress));
        assert!(s.read(224, 771, 11).is_ok());
    }

    #[test]
    fn fixed_values_are_the_golden_ones() {
        let s = state(false);
        // System 840-846: 52.2 V, -8.2 A, -428 W, 87 %, discharging, -31.8 Ah, 86 400 s.
        assert_eq!(
            s.read(100, 840, 7).unwrap(),
            vec![522, 65454, 65108, 87, 2, 318, 864]
        );
        assert_eq!(s.read(100, 817, 1).unwrap(), vec![850]);
        assert_eq!(s.read(100, 826, 1).unwrap(), vec![240]);
        assert_eq!(s.read(100, 850, 2).unwrap(), vec![1200, 228]);
        assert_eq!(s.read(100, 860, 1).unwrap(), vec![35]);
        // Battery: -428 W (int32), 52.25 V, no starter, -8.2 A, -31.8 Ah, 87.3 %.
        assert_eq!(s.read(226, 256, 2).unwrap(), vec![0xFFFF, 65108]);
        assert_eq!(
            s.read(226, 259, 8).unwrap(),
            vec![5225, 0, 65454, 0, 0, 0, 318, 873]
        );
        // Solar charger: Bulk, 98.4 V, 12.2 A; 1200 W in both registers, MPPT active.
        assert_eq!(s.read(224, 775, 3).unwrap(), vec![3, 9840, 122]);
        assert_eq!(s.read(224, 789, 5).unwrap(), vec![12000, 12345, 2, 0, 1200]);
        // VE.Bus: 850 W out (10 W steps); 52.25 V, -16.3 A, 1 phase, no input, 87.3 %, Inverting.
        assert_eq!(s.read(227, 23, 1).unwrap(), vec![85]);
        assert_eq!(
            s.read(227, 26, 6).unwrap(),
            vec![5225, 65373, 1, 240, 873, 9]
        );
    }

    /// An animated simulator whose clock stands still at `start_hour`.
    fn frozen(start_hour: f64, start_soc: f64) -> SimState {
        SimState::new(GxSimOptions {
            time_scale: 0.0,
            start_hour,
            start_soc,
            ..GxSimOptions::default()
        })
    }

    /// `path` as a client decodes it from a read of its register (`prefer`:
    /// the poller's choice among 16- and 32-bit duplicates).
    fn read_value(
        s: &SimState,
        unit: u8,
        class: ModbusClass,
        path: &str,
        prefer: Option<ModbusType>,
    ) -> f64 {
        let register = s.list.find(class.service(), path, prefer).unwrap();
        let words = s.read(unit, register.address, register.ty.words()).unwrap();
        match decode(register, &words).unwrap() {
            Decoded::Number(v) => v,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn animated_reads_balance_within_the_register_resolution() {
        for (hour, soc) in [
            (3.0, 87.3),
            (7.75, 60.0),
            (12.5, 97.0),
            (19.5, 80.0),
            (5.0, 25.0),
        ] {
            let s = frozen(hour, soc);
            let sys = |path| read_value(&s, 100, ModbusClass::System, path, None);
            let (pv, grid, genset) = (
                sys("/Dc/Pv/Power"),
                sys("/Ac/Grid/L1/Power"),
                sys("/Ac/Genset/L1/Power"),
            );
            let (load, dc_loads, battery) = (
                sys("/Ac/Consumption/L1/Power"),
                sys("/Dc/System/Power"),
                sys("/Dc/Battery/Power"),
            );
            // Six 1 W registers, each rounded by up to 0.5 W; Multi losses 0-8 %.
            let residual = pv + grid + genset - load - dc_loads - battery;
            assert!(
                (-3.0..=0.08 * (load + genset) + 3.0).contains(&residual),
                "{hour} h: {residual} W"
            );
            let current = read_value(&s, 226, ModbusClass::Battery, "/Dc/0/Current", None);
            let power = read_value(
                &s,
                226,
                ModbusClass::Battery,
                "/Dc/0/Power",
                Some(ModbusType::I32),
            );
            assert!(
                current * battery >= 0.0 && power * battery >= 0.0,
                "{hour} h"
            );
            assert!(
                (power - battery).abs() <= 1.0,
                "{hour} h: {power} / {battery} W"
            );
            if hour < 6.0 {
                assert_eq!(pv, 0.0, "{hour} h: night");
            }
            let generator = sys("/Ac/ActiveIn/Source") == 2.0;
            assert_eq!(generator, soc < 30.0, "{hour} h: generator");
            assert_eq!(generator, genset > 0.0);
        }
    }
}
