//! What `ctr tasks ls` says about a node's containers.

/// One containerd task: a container's process as the device's runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

impl Task {
    pub fn running(&self) -> bool {
        self.status == "RUNNING"
    }
}

/// Parses the table `ctr tasks ls` prints (`TASK PID STATUS`, one task a line).
pub(crate) fn parse_tasks(table: &str) -> Vec<Task> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let id = cols.next()?.to_owned();
            let pid = cols.next()?.parse().ok()?;
            let status = cols.next()?.to_owned();
            Some(Task { id, pid, status })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ctr_tasks_table() {
        let table = "TASK    PID      STATUS    \n\
                     3eaf52  20601    RUNNING\n\
                     010e9f  0        STOPPED\n\
                     garbage line\n";
        let tasks = parse_tasks(table);
        assert_eq!(tasks.len(), 2);
        assert_eq!(
            tasks[0],
            Task {
                id: "3eaf52".into(),
                pid: 20601,
                status: "RUNNING".into()
            }
        );
        assert!(tasks[0].running());
        assert!(!tasks[1].running());
    }

    #[test]
    fn empty_table_has_no_tasks() {
        assert!(parse_tasks("TASK    PID      STATUS    \n").is_empty());
        assert!(parse_tasks("").is_empty());
    }
}
