-- Who follows a user's device list. A device-list change wakes only the waiting syncs of the
-- users that follow the changed user (`Store::device_list_followers`); without this index that
-- look-up scans every interest row.
CREATE INDEX device_list_interest_target ON device_list_interest (target);
