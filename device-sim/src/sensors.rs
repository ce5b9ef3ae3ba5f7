//! Sensor models that look real on a chart: a daily temperature cycle with
//! noise, humidity that falls as temperature rises, pressure as a slow random
//! walk, vibration with occasional spikes, and a slowly draining battery.

use std::str::FromStr;

use protocol::MetricDescriptor;

use telemetry_device::rng::Rng;

const DAY_MS: f64 = 86_400_000.0;

/// A kind of sensor a simulated device carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorKind {
    Temperature,
    Humidity,
    Pressure,
    Vibration,
    Battery,
}

impl SensorKind {
    pub const ALL: [SensorKind; 5] = [
        SensorKind::Temperature,
        SensorKind::Humidity,
        SensorKind::Pressure,
        SensorKind::Vibration,
        SensorKind::Battery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SensorKind::Temperature => "temperature",
            SensorKind::Humidity => "humidity",
            SensorKind::Pressure => "pressure",
            SensorKind::Vibration => "vibration",
            SensorKind::Battery => "battery",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            SensorKind::Temperature => "°C",
            SensorKind::Humidity => "%RH",
            SensorKind::Pressure => "hPa",
            SensorKind::Vibration => "mm/s",
            SensorKind::Battery => "%",
        }
    }
}

impl FromStr for SensorKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        SensorKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = SensorKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown sensor {text:?}; known: {}", known.join(", "))
            })
    }
}

/// The sensors of one device and their state.
#[derive(Debug, Clone)]
pub struct Sensors {
    kinds: Vec<SensorKind>,
    rng: Rng,
    /// This device's offset from the nominal temperature, so a fleet's
    /// lines do not lie on top of each other.
    temperature_offset: f64,
    pressure: f64,
    battery: f64,
    /// From this device time on, the sensors misbehave now and then.
    misbehaving_from: Option<u64>,
}

/// How a misbehaving device's four minutes go, in seconds from its start:
/// its temperature runs 15 °C hot from 30 to 90, and it reads nothing
/// from 150 to 200.
const MISBEHAVING_CYCLE_S: u64 = 240;
const RUNS_HOT_S: std::ops::Range<u64> = 30..90;
const SILENT_S: std::ops::Range<u64> = 150..200;

impl Sensors {
    /// Sensors of `kinds`, their noise drawn from `seed`.
    pub fn new(kinds: &[SensorKind], seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let temperature_offset = rng.normal() * 1.5;
        let pressure = 1_013.0 + rng.normal() * 5.0;
        let battery = 80.0 + rng.unit() * 20.0;
        Sensors {
            kinds: kinds.to_vec(),
            rng,
            temperature_offset,
            pressure,
            battery,
            misbehaving_from: None,
        }
    }

    /// Sensors that, from device time `from_ms` on, go wrong now and then:
    /// a minute in every four with the temperature 15 °C too hot, then 50
    /// seconds with nothing read. What `hub demo`'s rules catch.
    pub fn misbehaving(mut self, from_ms: u64) -> Self {
        self.misbehaving_from = Some(from_ms);
        self
    }

    /// The descriptors for `Hello`; metric ids are 1, 2, … in `kinds` order.
    pub fn descriptors(&self) -> Vec<MetricDescriptor> {
        self.kinds
            .iter()
            .zip(1u16..)
            .map(|(kind, id)| MetricDescriptor {
                id,
                name: kind.name().into(),
                unit: kind.unit().into(),
            })
            .collect()
    }

    /// How many readings one [`Self::sample`] produces.
    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    /// Whether the device has no sensors.
    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Reads every sensor at device time `t_ms`: `(metric id, value)` pairs.
    pub fn sample(&mut self, t_ms: u64, out: &mut Vec<(u16, f64)>) {
        // Warmest mid-afternoon, coolest before dawn.
        let day = (t_ms as f64 % DAY_MS) / DAY_MS;
        let phase = self
            .misbehaving_from
            .filter(|from| t_ms >= *from)
            .map(|from| ((t_ms - from) / 1_000) % MISBEHAVING_CYCLE_S);
        if phase.is_some_and(|phase| SILENT_S.contains(&phase)) {
            return;
        }
        let hot = if phase.is_some_and(|phase| RUNS_HOT_S.contains(&phase)) {
            15.0
        } else {
            0.0
        };
        let temperature = 20.0
            + self.temperature_offset
            + 5.0 * (std::f64::consts::TAU * (day - 0.375)).sin()
            + hot
            + self.rng.normal() * 0.15;
        for (kind, id) in self.kinds.iter().zip(1u16..) {
            let value = match kind {
                SensorKind::Temperature => temperature,
                SensorKind::Humidity => {
                    (55.0 - 2.5 * (temperature - 20.0) + self.rng.normal() * 0.8).clamp(0.0, 100.0)
                }
                SensorKind::Pressure => {
                    // A random walk pulled gently back towards sea level.
                    self.pressure += self.rng.normal() * 0.05 - 0.001 * (self.pressure - 1_013.0);
                    self.pressure
                }
                SensorKind::Vibration => {
                    let base = 0.5 + self.rng.normal().abs() * 0.3;
                    if self.rng.unit() < 0.01 {
                        base + 5.0 + self.rng.unit() * 10.0
                    } else {
                        base
                    }
                }
                SensorKind::Battery => {
                    self.battery = (self.battery - 0.000_5).max(0.0);
                    self.battery
                }
            };
            out.push((id, (value * 1_000.0).round() / 1_000.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(kind: SensorKind, samples: usize, step_ms: u64) -> Vec<f64> {
        let mut sensors = Sensors::new(&[kind], 42);
        let mut out = Vec::new();
        for i in 0..samples {
            sensors.sample(i as u64 * step_ms, &mut out);
        }
        out.into_iter().map(|(_, v)| v).collect()
    }

    #[test]
    fn a_misbehaving_device_runs_hot_then_goes_silent_each_cycle() {
        let from = 3 * 3_600_000;
        let mut sensors = Sensors::new(&[SensorKind::Temperature], 5).misbehaving(from);
        let mut at = |s: u64| {
            let mut out = Vec::new();
            sensors.sample(from + s * 1_000, &mut out);
            out.first().map(|(_, v)| *v)
        };
        let normal = at(10).unwrap();
        let hot = at(60).unwrap();
        assert!(hot - normal > 10.0, "{normal} then {hot}");
        assert_eq!(at(160), None, "silent");
        assert!((at(210).unwrap() - normal).abs() < 3.0);
        assert!(
            at(240 + 60).unwrap() - normal > 10.0,
            "again the next cycle"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_readings() {
        let a = series(SensorKind::Pressure, 100, 1_000);
        let b = series(SensorKind::Pressure, 100, 1_000);
        assert_eq!(a, b);
    }

    #[test]
    fn temperature_follows_a_daily_cycle() {
        // Hourly for a day: afternoon warmer than night by several degrees.
        let day = series(SensorKind::Temperature, 24, 3_600_000);
        assert!(day[15] - day[3] > 6.0, "{day:?}");
    }

    #[test]
    fn humidity_falls_when_temperature_rises() {
        let mut sensors = Sensors::new(&[SensorKind::Temperature, SensorKind::Humidity], 1);
        let mut night = Vec::new();
        let mut afternoon = Vec::new();
        sensors.sample(3 * 3_600_000, &mut night);
        sensors.sample(15 * 3_600_000, &mut afternoon);
        assert!(afternoon[0].1 > night[0].1);
        assert!(afternoon[1].1 < night[1].1);
    }

    #[test]
    fn vibration_spikes_now_and_then() {
        let values = series(SensorKind::Vibration, 5_000, 1_000);
        let spikes = values.iter().filter(|&&v| v > 5.0).count();
        assert!(
            (10..150).contains(&spikes),
            "{spikes} spikes in 5000 samples"
        );
    }

    #[test]
    fn the_battery_only_drains() {
        let values = series(SensorKind::Battery, 1_000, 1_000);
        assert!(values.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn descriptors_number_metrics_from_one_with_units() {
        let sensors = Sensors::new(&[SensorKind::Humidity, SensorKind::Battery], 0);
        let descriptors = sensors.descriptors();
        assert_eq!(descriptors[0].id, 1);
        assert_eq!(descriptors[0].unit, "%RH");
        assert_eq!(descriptors[1].name, "battery");
    }
}
