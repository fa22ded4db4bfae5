-- openGauss stand-in (tests only): the 9.2-era SQL Baton's openGauss
-- flavor reads, over PostgreSQL 15, created by the test's gs_initdb. Names
-- and columns are openGauss's (positions as text); objects PostgreSQL 15
-- also has under another shape (pg_stat_replication,
-- pg_stat_get_wal_receiver) shadow it from public, first in search_path.
ALTER DATABASE postgres SET search_path = public, pg_catalog;
CREATE FUNCTION public.pg_current_xlog_location() RETURNS text
    LANGUAGE sql AS $$ SELECT pg_catalog.pg_current_wal_lsn()::text $$;
CREATE FUNCTION public.pg_last_xlog_receive_location() RETURNS text
    LANGUAGE sql AS $$ SELECT pg_catalog.pg_last_wal_receive_lsn()::text $$;
CREATE FUNCTION public.pg_last_xlog_replay_location() RETURNS text
    LANGUAGE sql AS $$ SELECT pg_catalog.pg_last_wal_replay_lsn()::text $$;
CREATE FUNCTION public.pg_stat_get_wal_receiver(
    OUT receiver_pid int, OUT local_role text, OUT peer_role text, OUT peer_state text,
    OUT state text, OUT sender_sent_location text, OUT sender_write_location text,
    OUT sender_flush_location text, OUT sender_replay_location text,
    OUT receiver_received_location text, OUT receiver_write_location text,
    OUT receiver_flush_location text, OUT receiver_replay_location text,
    OUT sync_percent text, OUT channel text) RETURNS SETOF record
    LANGUAGE sql AS $$
    SELECT pid, 'Standby', 'Primary', 'Normal',
           CASE status WHEN 'streaming' THEN 'Normal' ELSE initcap(status) END,
           latest_end_lsn::text, latest_end_lsn::text, latest_end_lsn::text, NULL,
           written_lsn::text, written_lsn::text, flushed_lsn::text,
           pg_catalog.pg_last_wal_replay_lsn()::text, '100%',
           '<--' || sender_host || ':' || (sender_port + 1)
      FROM pg_catalog.pg_stat_wal_receiver $$;
CREATE VIEW public.pg_stat_replication AS
    SELECT pid, usesysid, usename, application_name, client_addr, client_hostname,
           client_port, backend_start, initcap(state) AS state,
           sent_lsn::text AS sender_sent_location, write_lsn::text AS receiver_write_location,
           flush_lsn::text AS receiver_flush_location,
           replay_lsn::text AS receiver_replay_location, sync_priority,
           initcap(sync_state) AS sync_state
      FROM pg_catalog.pg_stat_replication;
