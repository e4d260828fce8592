//! Routed networking with our own BGP speaker (Calico class): filled by the BGP routing issue; nothing here yet.
