//! What each module does to a reading, apart from how readings reach it: pure, so that the
//! claim of the examples (the model flags exactly the sensor's spikes) is tested without a
//! hub, and the pipeline test over a real hub only has to prove the wiring.

use std::collections::VecDeque;

use crate::{Anomaly, Reading};

/// The sensor's values: a seeded random walk around `base` (within 5 °C of it) with a
/// spike of 15 °C every `spike_every` readings, so that the filter and the model have
/// something to do. Deterministic per sensor id.
#[derive(Debug, Clone)]
pub struct Walk {
    id: String,
    base: f64,
    spike_every: u64,
    level: f64,
    seq: u64,
    state: u64,
}

impl Walk {
    pub fn new(id: &str, base: f64, spike_every: u64) -> Walk {
        // xorshift64: no dependency for ten lines of randomness.
        let state = id.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        Walk {
            id: id.to_owned(),
            base,
            spike_every: spike_every.max(1),
            level: base,
            seq: 0,
            state,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether reading `seq` is a spike.
    pub fn is_spike(&self, seq: u64) -> bool {
        seq.is_multiple_of(self.spike_every)
    }
}

impl Iterator for Walk {
    type Item = Reading;

    fn next(&mut self) -> Option<Reading> {
        self.seq += 1;
        let step = (self.uniform() - 0.5) * 0.4;
        self.level = (self.level + step).clamp(self.base - 5.0, self.base + 5.0);
        let celsius = if self.is_spike(self.seq) {
            self.level + 15.0
        } else {
            self.level
        };
        Some(Reading {
            sensor: self.id.clone(),
            seq: self.seq,
            celsius: (celsius * 100.0).round() / 100.0,
            smoothed: None,
        })
    }
}

/// The filter: drops readings outside what the sensor can measure and adds the moving
/// average over the last `window` readings it passed.
#[derive(Debug, Clone)]
pub struct Smoother {
    min: f64,
    max: f64,
    window: usize,
    recent: VecDeque<f64>,
}

impl Smoother {
    pub fn new(min: f64, max: f64, window: usize) -> Smoother {
        let window = window.max(1);
        Smoother {
            min,
            max,
            window,
            recent: VecDeque::with_capacity(window),
        }
    }

    /// The reading with its moving average, or `None` when it is out of range.
    pub fn pass(&mut self, mut reading: Reading) -> Option<Reading> {
        if !(self.min..=self.max).contains(&reading.celsius) {
            return None;
        }
        if self.recent.len() == self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(reading.celsius);
        let mean = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        reading.smoothed = Some((mean * 100.0).round() / 100.0);
        Some(reading)
    }
}

/// Model v1: follows the normal level with an exponential average and scores each reading
/// by its distance from it, in standard deviations of those distances so far (Welford; at
/// least `min_sd`): more than `threshold` is an anomaly, and anomalies do not move the
/// level. It flags nothing before it has seen ten normal readings.
#[derive(Debug, Clone)]
pub struct Model {
    pub version: String,
    threshold: f64,
    min_sd: f64,
    level: Option<f64>,
    n: u64,
    mean: f64,
    m2: f64,
}

impl Model {
    pub fn new(version: &str, threshold: f64, min_sd: f64) -> Model {
        Model {
            version: version.to_owned(),
            threshold,
            min_sd,
            level: None,
            n: 0,
            mean: 0.0,
            m2: 0.0,
        }
    }

    /// How many readings taught it what normal is.
    pub fn scored(&self) -> u64 {
        self.n
    }

    /// Scores a reading; `Some` when it is an anomaly.
    pub fn score(&mut self, r: &Reading) -> Option<Anomaly> {
        let x = r.celsius - self.level.unwrap_or(r.celsius);
        let sd = if self.n > 1 {
            (self.m2 / (self.n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let score = (x - self.mean).abs() / sd.max(self.min_sd).max(f64::EPSILON);
        if self.n >= 10 && score > self.threshold {
            // An anomaly does not teach the model what normal is.
            return Some(Anomaly {
                model: self.version.clone(),
                sensor: r.sensor.clone(),
                seq: r.seq,
                celsius: r.celsius,
                score: (score * 100.0).round() / 100.0,
            });
        }
        self.level = Some(self.level.map_or(r.celsius, |l| 0.8 * l + 0.2 * r.celsius));
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples' claim, without a hub: through the filter's defaults, the model at its
    /// default threshold flags the sensor's spikes and nothing else.
    #[test]
    fn the_model_flags_exactly_the_sensors_spikes() {
        let walk = Walk::new("sensor", 21.0, 25);
        let spikes: Vec<u64> = (1..=500).filter(|s| walk.is_spike(*s)).collect();
        let mut filter = Smoother::new(-40.0, 85.0, 5);
        let mut model = Model::new("v1", 3.0, 0.5);
        let flagged: Vec<u64> = walk
            .take(500)
            .filter_map(|r| filter.pass(r))
            .filter_map(|r| model.score(&r))
            .map(|a| a.seq)
            .collect();
        assert_eq!(flagged, spikes);
    }

    #[test]
    fn the_filter_drops_what_is_out_of_range_and_averages_the_rest() {
        let mut f = Smoother::new(0.0, 50.0, 2);
        let r = |c: f64| Reading {
            sensor: "s".into(),
            seq: 1,
            celsius: c,
            smoothed: None,
        };
        assert_eq!(f.pass(r(-1.0)), None);
        assert_eq!(f.pass(r(10.0)).and_then(|r| r.smoothed), Some(10.0));
        assert_eq!(f.pass(r(20.0)).and_then(|r| r.smoothed), Some(15.0));
        assert_eq!(f.pass(r(30.0)).and_then(|r| r.smoothed), Some(25.0));
        assert_eq!(f.pass(r(99.0)), None);
    }
}
