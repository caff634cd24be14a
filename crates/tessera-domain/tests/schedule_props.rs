//! Property tests of schedule slot arithmetic: a simulated scheduler that observes the clock at
//! arbitrary moments (jumps forward, steps back, downtime) and restarts from its stored state
//! never fires a slot twice and never loses the latest due slot.

use proptest::prelude::*;
use tessera_domain::board::{fire, ScheduleKind};
use tessera_domain::Timestamp;

/// What the store keeps for one item: the pending slot. Firing a slot and moving to the next
/// one is one transaction, so a restart resumes from exactly this.
#[derive(Clone, Copy)]
struct Stored {
    next: Option<Timestamp>,
}

/// One scheduler pass at `now`: fires the pending slot if it is due.
fn tick(stored: &mut Stored, kind: ScheduleKind, step: i64, now: Timestamp) -> Option<Timestamp> {
    let firing = fire(kind, Some(step), stored.next?, now)?;
    stored.next = firing.next;
    Some(firing.slot)
}

#[derive(Debug, Clone)]
enum Step {
    /// The clock moves forward by this many ms and the scheduler looks.
    Advance(i64),
    /// The clock steps back (NTP correction) by this many ms and the scheduler looks.
    Rewind(i64),
    /// The process restarts: only the stored state survives.
    Restart,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => (0i64..5_000).prop_map(Step::Advance),
            3 => (0i64..400_000).prop_map(Step::Advance),
            1 => (0i64..10_000_000).prop_map(Step::Advance),
            1 => (0i64..120_000).prop_map(Step::Rewind),
            1 => Just(Step::Restart),
        ],
        1..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn interval_slots_fire_once_and_the_latest_due_slot_is_never_lost(
        start in 0i64..1_000_000,
        interval_s in 60i64..3_600,
        steps in steps(),
    ) {
        let step = interval_s * 1000;
        let kind = ScheduleKind::Interval;
        let mut stored = Stored { next: Some(Timestamp::from_millis(start)) };
        let mut clock = 0i64;
        let mut max_seen = 0i64;
        let mut fired: Vec<i64> = Vec::new();
        // Whether every look at the clock came at most one interval after the previous one
        // (no downtime): then no slot at all may be skipped.
        let mut gapless = true;
        let mut last_look = 0i64;
        for s in steps {
            match s {
                Step::Advance(ms) => clock += ms,
                Step::Rewind(ms) => clock = (clock - ms).max(0),
                Step::Restart => {
                    // A new process knows only what was stored.
                    stored = Stored { next: stored.next };
                    continue;
                }
            }
            if clock - last_look > step {
                gapless = false;
            }
            last_look = clock;
            max_seen = max_seen.max(clock);
            let now = Timestamp::from_millis(clock);
            if let Some(slot) = tick(&mut stored, kind, step, now) {
                let slot = slot.as_millis();
                // Due, on the grid, and later than every slot fired before.
                prop_assert!(slot <= clock);
                prop_assert_eq!((slot - start).rem_euclid(step), 0);
                if let Some(&prev) = fired.last() {
                    prop_assert!(slot > prev, "slot {} fired after {}", slot, prev);
                }
                fired.push(slot);
            }
            // The pending slot is always in the future of every slot fired.
            let next = stored.next.map(Timestamp::as_millis);
            prop_assert!(next.is_some());
            if let (Some(next), Some(&last)) = (next, fired.last()) {
                prop_assert!(next > last);
                prop_assert_eq!((next - start).rem_euclid(step), 0);
            }
            // No lost slot: the latest grid slot this clock reading has reached was fired
            // (earlier missed ones collapse into it; only it must not be lost).
            if clock >= start && clock == max_seen {
                let latest_due = start + (clock - start) / step * step;
                prop_assert!(fired.contains(&latest_due), "latest due slot {} not fired (fired {:?})", latest_due, fired);
            }
        }
        let mut dedup = fired.clone();
        dedup.dedup();
        prop_assert_eq!(dedup.len(), fired.len());
        if gapless && max_seen >= start {
            // Without downtime every slot up to the last reading fires, in order.
            let expected: Vec<i64> = (0..).map(|k| start + k * step).take_while(|s| *s <= max_seen).collect();
            prop_assert_eq!(fired, expected);
        }
    }

    #[test]
    fn once_fires_exactly_once(start in 0i64..1_000_000, looks in prop::collection::vec(0i64..2_000_000, 1..50)) {
        let mut stored = Stored { next: Some(Timestamp::from_millis(start)) };
        let mut fired = 0;
        for at in looks {
            if tick(&mut stored, ScheduleKind::Once, 60_000, Timestamp::from_millis(at)).is_some() {
                prop_assert!(at >= start);
                fired += 1;
            }
        }
        prop_assert!(fired <= 1);
        prop_assert_eq!(fired == 1, stored.next.is_none());
    }
}
