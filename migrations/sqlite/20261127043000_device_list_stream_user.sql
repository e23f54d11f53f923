-- Device-list changes of one user after a position. `/sync` asks "which of the users I follow
-- changed after my `since`?"; with only the `pos` primary key that is a scan of every change
-- after `since` (the whole stream for a client that was away for days: about 1.6 s per sync at a
-- million changes on PostgreSQL), with this index it is one probe per followed user.
CREATE INDEX device_list_stream_user ON device_list_stream (user_id, pos);
