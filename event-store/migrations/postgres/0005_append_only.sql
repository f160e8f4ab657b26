-- The log is append-only: UPDATE and DELETE of events are refused, whoever
-- sends them, unless triggers are switched off (ALTER TABLE … DISABLE
-- TRIGGER, or session_replication_role = replica: the table's owner or a
-- superuser). Against those, the hash chain and anchors are the evidence;
-- the role Strata runs as should hold INSERT and SELECT only (README
-- "Tamper evidence"). TRUNCATE is a privilege of its own: that role lacks it.
CREATE FUNCTION strata_events_refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'strata_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'an event is corrected by appending another; see README "Tamper evidence"';
END
$$;
CREATE TRIGGER strata_events_append_only
    BEFORE UPDATE OR DELETE ON strata_events
    FOR EACH STATEMENT EXECUTE FUNCTION strata_events_refuse_rewrite();
