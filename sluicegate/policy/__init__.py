"""Policy what-ifs: one call's decisions stage by stage (`evaluate`), and the recorded calls of a
period replayed against another config (`replay`); `sluicegate policy explain | replay` (`cli`)."""
