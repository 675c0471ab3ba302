//! The client role: the read model of pod states and the placement of users on pods.
