//! What the bridge has handed the broker and what the broker has
//! acknowledged, as pure state: from it comes the cursor, the highest
//! storage position at or below which every reading was acknowledged.
//!
//! rumqttc tells the bridge the packet id of a publish only when it goes out
//! (`Outgoing::Publish(pkid)`), in the order the bridge asked for them, and
//! the broker's `PubAck(pkid)` later. A connection that ends loses whatever
//! was not acknowledged (with a clean session rumqttc drops it, see
//! ARCHITECTURE.md), so the bridge then rewinds to the cursor and publishes
//! again from there: at least once, in order per device.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::commits::Position;

/// One publish asked of rumqttc: readings (one, or a device's batch with
/// `--mqtt-batch`), or a message of the hub's own (statuses, discovery
/// configs, command results), which has no place in the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    Readings(Vec<Position>),
    Own,
}

/// The delivery state of one connection to the broker.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Asked of rumqttc, not yet gone out, in order.
    asked: VecDeque<Tag>,
    /// Gone out, waiting for the broker's ack, by packet id.
    in_flight: HashMap<u16, Tag>,
    /// Messages of readings asked for and not yet acknowledged.
    messages: usize,
    /// Messages of the hub's own asked for and not yet acknowledged.
    own: usize,
    /// Every reading asked for and not yet acknowledged (a multiset: a
    /// rewind may ask for a position again).
    unacked: BTreeMap<Position, u32>,
    /// Every position up to this one has been asked for (or was gone from
    /// storage when read).
    read_through: Position,
    /// The cursor as of the last rewind: nothing below it is outstanding.
    acked_through: Position,
}

impl Delivery {
    /// Starts after `cursor`: everything up to it was acknowledged before.
    pub fn starting_at(cursor: Position) -> Self {
        Delivery {
            read_through: cursor,
            acked_through: cursor,
            ..Delivery::default()
        }
    }

    /// Where the next page of readings starts (after this position).
    pub fn read_through(&self) -> Position {
        self.read_through
    }

    /// Messages of readings asked for and not acknowledged yet.
    pub fn outstanding(&self) -> usize {
        self.messages
    }

    /// A message of readings (at these positions, in order) was asked of
    /// rumqttc.
    pub fn asked(&mut self, positions: Vec<Position>) {
        for &pos in &positions {
            *self.unacked.entry(pos).or_default() += 1;
            self.read_through = self.read_through.max(pos);
        }
        self.messages += 1;
        self.asked.push_back(Tag::Readings(positions));
    }

    /// A message of the hub's own was asked of rumqttc.
    pub fn asked_own(&mut self) {
        self.asked.push_back(Tag::Own);
        self.own += 1;
    }

    /// Messages of the hub's own asked for and not acknowledged yet.
    pub fn own_outstanding(&self) -> usize {
        self.own
    }

    /// Storage was read up to `pos`: positions without a reading (none
    /// matched, or they are gone) need no acknowledgement.
    pub fn read_up_to(&mut self, pos: Position) {
        self.read_through = self.read_through.max(pos);
    }

    /// rumqttc sent the oldest publish asked for, with packet id `pkid`
    /// (0 at QoS 0, which the broker never acknowledges: sent is done).
    pub fn went_out(&mut self, pkid: u16) {
        let Some(tag) = self.asked.pop_front() else {
            return;
        };
        if pkid == 0 {
            self.settle(tag);
        } else {
            self.in_flight.insert(pkid, tag);
        }
    }

    /// The broker acknowledged packet `pkid`.
    pub fn acked(&mut self, pkid: u16) {
        if let Some(tag) = self.in_flight.remove(&pkid) {
            self.settle(tag);
        }
    }

    fn settle(&mut self, tag: Tag) {
        let positions = match tag {
            Tag::Readings(positions) => positions,
            Tag::Own => {
                self.own = self.own.saturating_sub(1);
                return;
            }
        };
        self.messages = self.messages.saturating_sub(1);
        for pos in positions {
            if let Some(count) = self.unacked.get_mut(&pos) {
                *count -= 1;
                if *count == 0 {
                    self.unacked.remove(&pos);
                }
            }
        }
    }

    /// The highest position at or below which every reading was
    /// acknowledged.
    pub fn cursor(&self) -> Position {
        match self.unacked.keys().next() {
            Some(&oldest) => (oldest - 1).max(self.acked_through),
            None => self.read_through,
        }
    }

    /// The connection ended: what was not acknowledged is lost. Starts over
    /// from the cursor, which is returned.
    pub fn rewind(&mut self) -> Position {
        let cursor = self.cursor();
        *self = Delivery::starting_at(cursor);
        cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_stops_below_the_oldest_unacknowledged_reading() {
        let mut delivery = Delivery::starting_at(10);
        for pos in 11..=14 {
            delivery.asked(vec![pos]);
        }
        assert_eq!(delivery.cursor(), 10);
        for pkid in 1..=4 {
            delivery.went_out(pkid);
        }
        // Acks out of order: 12 and 13 first.
        delivery.acked(2);
        delivery.acked(3);
        assert_eq!(delivery.cursor(), 10);
        delivery.acked(1);
        assert_eq!(delivery.cursor(), 13);
        delivery.acked(4);
        assert_eq!(delivery.cursor(), 14);
        assert_eq!(delivery.outstanding(), 0);
    }

    #[test]
    fn the_hubs_own_messages_take_a_packet_id_but_not_a_position() {
        let mut delivery = Delivery::starting_at(0);
        delivery.asked_own();
        delivery.asked(vec![1]);
        delivery.went_out(1); // the status message
        delivery.went_out(2); // reading 1
        assert_eq!(delivery.own_outstanding(), 1);
        delivery.acked(1);
        assert_eq!(delivery.cursor(), 0);
        assert_eq!(delivery.own_outstanding(), 0);
        delivery.acked(2);
        assert_eq!(delivery.cursor(), 1);
    }

    #[test]
    fn positions_read_without_a_reading_move_the_cursor_once_the_rest_is_acknowledged() {
        let mut delivery = Delivery::starting_at(0);
        delivery.asked(vec![1]);
        delivery.read_up_to(5); // 2..=5 gone by retention
        assert_eq!(delivery.cursor(), 0);
        delivery.went_out(7);
        delivery.acked(7);
        assert_eq!(delivery.cursor(), 5);
        assert_eq!(delivery.read_through(), 5);
    }

    #[test]
    fn a_lost_connection_rewinds_to_the_cursor() {
        let mut delivery = Delivery::starting_at(0);
        for pos in 1..=3 {
            delivery.asked(vec![pos]);
        }
        delivery.went_out(1);
        delivery.went_out(2);
        delivery.acked(1);
        // 2 went out unacknowledged, 3 never went out: both are lost.
        assert_eq!(delivery.rewind(), 1);
        assert_eq!(delivery.read_through(), 1);
        assert_eq!(delivery.outstanding(), 0);
        // An ack of the old connection's packet means nothing now.
        delivery.acked(2);
        assert_eq!(delivery.cursor(), 1);
        // Asked again, the same position counts once more.
        delivery.asked(vec![2]);
        delivery.went_out(1);
        delivery.acked(1);
        assert_eq!(delivery.cursor(), 2);
    }

    #[test]
    fn a_batch_settles_all_its_readings_with_one_ack() {
        let mut delivery = Delivery::starting_at(0);
        delivery.asked(vec![1, 3]); // device a
        delivery.asked(vec![2]); // device b
        assert_eq!(delivery.outstanding(), 2);
        delivery.went_out(1);
        delivery.went_out(2);
        delivery.acked(2);
        assert_eq!(delivery.cursor(), 0);
        delivery.acked(1);
        assert_eq!(delivery.cursor(), 3);
        assert_eq!(delivery.outstanding(), 0);
    }

    #[test]
    fn at_qos_0_going_out_is_delivery() {
        let mut delivery = Delivery::starting_at(0);
        delivery.asked(vec![1]);
        delivery.asked(vec![2]);
        delivery.went_out(0);
        assert_eq!(delivery.cursor(), 1);
        delivery.went_out(0);
        assert_eq!(delivery.cursor(), 2);
    }
}
