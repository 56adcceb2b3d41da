-- websmsd store, schema version 4: the search by number matches any part of a number
-- (LIKE '%...%'), which no index serves; the (recipient, sender) index only cost a
-- write on every insert.
DROP INDEX messages_numbers;
