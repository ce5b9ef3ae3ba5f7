//! What the whole machine did during a run, from `/proc/stat`: how busy its
//! CPUs were and how much time the hypervisor stole. On a shared 2-vCPU VM
//! steal comes and goes by the minute, so latency numbers are read beside it.

/// The machine's cumulative CPU times, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    total: u64,
    idle: u64,
    steal: u64,
}

/// Shares of the CPUs' time between two readings, in percent.
#[derive(Debug, Clone, Copy)]
pub struct CpuShare {
    /// Running anything, this process and the hub included.
    pub busy: f64,
    /// Taken by the hypervisor for other guests.
    pub steal: f64,
}

impl CpuTimes {
    /// Now; all zero where `/proc/stat` cannot be read.
    pub fn now() -> CpuTimes {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| stat.lines().next().map(CpuTimes::parse))
            .unwrap_or_default()
    }

    /// The aggregate `cpu` line: user nice system idle iowait irq softirq
    /// steal (guest time is already inside user).
    fn parse(line: &str) -> CpuTimes {
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        CpuTimes {
            total: fields.iter().sum(),
            idle: field(3) + field(4),
            steal: field(7),
        }
    }

    /// What happened between `earlier` and this reading.
    pub fn since(&self, earlier: &CpuTimes) -> CpuShare {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64;
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        CpuShare {
            busy: 100.0 * (total - idle - steal) / total,
            steal: 100.0 * steal / total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_come_from_the_difference_of_two_readings() {
        let before = CpuTimes::parse("cpu  100 0 50 800 10 0 0 40 0 0");
        let after = CpuTimes::parse("cpu  160 0 70 880 20 0 0 70 0 0");
        // 200 ticks: 80 busy, 90 idle or waiting, 30 stolen.
        let share = after.since(&before);
        assert!((share.busy - 40.0).abs() < 1e-9, "{share:?}");
        assert!((share.steal - 15.0).abs() < 1e-9, "{share:?}");
    }
}
