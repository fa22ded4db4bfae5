-- Greenplum stand-in (tests only): the part of a Greenplum 7 catalog Baton
-- reads and changes. psql variables: port, datadir (the coordinator's).
CREATE TABLE gp_segment_configuration (
    dbid int2 PRIMARY KEY, content int2 NOT NULL, role "char" NOT NULL,
    preferred_role "char" NOT NULL, mode "char" NOT NULL, status "char" NOT NULL,
    port int4 NOT NULL, hostname text NOT NULL, address text NOT NULL, datadir text NOT NULL);
INSERT INTO gp_segment_configuration VALUES
    (1, -1, 'p', 'p', 'n', 'u', :port, '127.0.0.1', '127.0.0.1', :'datadir'),
    (2, 0, 'p', 'p', 's', 'u', 6000, 'sdw1', 'sdw1', '/data/primary/gpseg0'),
    (4, 0, 'm', 'm', 's', 'u', 7000, 'sdw2', 'sdw2', '/data/mirror/gpseg0'),
    (3, 1, 'm', 'p', 'n', 'd', 6001, 'sdw2', 'sdw2', '/data/primary/gpseg1'),
    (5, 1, 'p', 'm', 'n', 'u', 7001, 'sdw1', 'sdw1', '/data/mirror/gpseg1');
CREATE FUNCTION gp_add_master_standby(text, text, text, int4) RETURNS int2
LANGUAGE plpgsql AS $$
DECLARE d int2;
BEGIN
    IF coalesce(current_setting('gp_standin.gp_role', true), '') <> 'utility' THEN
        RAISE EXCEPTION 'gp_add_master_standby: only in utility mode';
    END IF;
    IF EXISTS (SELECT 1 FROM gp_segment_configuration WHERE content = -1 AND role = 'm') THEN
        RAISE EXCEPTION 'a standby coordinator is already configured';
    END IF;
    SELECT max(dbid) + 1 INTO d FROM gp_segment_configuration;
    INSERT INTO gp_segment_configuration VALUES (d, -1, 'm', 'm', 's', 'u', $4, $1, $2, $3);
    RETURN d;
END $$;
CREATE FUNCTION gp_remove_master_standby() RETURNS bool
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM gp_segment_configuration WHERE content = -1 AND role = 'm';
    RETURN true;
END $$;
-- gp_stat_replication as Greenplum 7 shows it: the coordinator's own
-- walsenders (content -1: the standby coordinator), then one row per
-- segment mirror, its primary's sender state and positions empty while the
-- mirror is not connected, sync_error saying why. The segments' rows come
-- from a table here; on a real cluster they are dispatched to every
-- segment, so gp_standin.segment_delay (seconds) makes that dispatch slow,
-- as a segment host that does not answer would.
CREATE TABLE gp_standin_mirroring (
    gp_segment_id int, state text, sent_lsn pg_lsn, write_lsn pg_lsn,
    flush_lsn pg_lsn, replay_lsn pg_lsn, sync_state text, sync_error text);
INSERT INTO gp_standin_mirroring VALUES
    (0, 'streaming', '0/C0001A8', '0/C0001A8', '0/C0001A8', '0/C000170', 'sync', 'none'),
    (1, NULL, NULL, NULL, NULL, NULL, NULL, 'walread');
CREATE FUNCTION gp_standin_dispatch() RETURNS bool
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(coalesce(nullif(current_setting('gp_standin.segment_delay', true), ''), '0')::float8);
    RETURN true;
END $$;
CREATE VIEW gp_stat_replication AS
    SELECT -1 AS gp_segment_id, pid, usesysid, usename, application_name, client_addr,
           client_hostname, client_port, backend_start, backend_xmin, state,
           sent_lsn, write_lsn, flush_lsn, replay_lsn, write_lag, flush_lag, replay_lag,
           sync_priority, sync_state, 'none'::text AS sync_error
      FROM pg_stat_replication
    UNION ALL
    SELECT m.gp_segment_id, NULL::int, NULL::oid, NULL::name, 'gp_walreceiver'::text, NULL::inet,
           NULL::text, NULL::int, NULL::timestamptz, NULL::xid, m.state,
           m.sent_lsn, m.write_lsn, m.flush_lsn, m.replay_lsn, NULL::interval, NULL::interval,
           NULL::interval, NULL::int, m.sync_state, m.sync_error
      FROM gp_standin_mirroring m WHERE gp_standin_dispatch();
