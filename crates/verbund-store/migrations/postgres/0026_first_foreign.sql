-- Partner side: a change that brought another owner's record here for the first time. Nothing
-- of ours can refer to a record before it is here (references are checked when written), so
-- such a change bears on nothing our own sync streams send: they pass it by on this column
-- alone, without looking the record up (a large initial share writes one per record).
ALTER TABLE changes ADD COLUMN first_foreign BOOLEAN NOT NULL DEFAULT false;
