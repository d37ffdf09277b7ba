CREATE TABLE resource (
	rid INTEGER NOT NULL, 
	res_type VARCHAR(64) NOT NULL, 
	res_id VARCHAR(64) NOT NULL, 
	version INTEGER NOT NULL, 
	last_updated FLOAT NOT NULL, 
	deleted BOOLEAN NOT NULL, 
	content BLOB, 
	PRIMARY KEY (rid), 
	CONSTRAINT uq_resource_type_id UNIQUE (res_type, res_id)
)
;;
CREATE INDEX ix_resource_type_updated ON resource (res_type, last_updated)
;;
CREATE TABLE resource_version (
	seq INTEGER NOT NULL, 
	rid BIGINT NOT NULL, 
	res_type VARCHAR(64) NOT NULL, 
	res_id VARCHAR(64) NOT NULL, 
	version INTEGER NOT NULL, 
	last_updated FLOAT NOT NULL, 
	method VARCHAR(8) NOT NULL, 
	deleted BOOLEAN NOT NULL, 
	content BLOB, 
	PRIMARY KEY (seq), 
	CONSTRAINT uq_version_rid_version UNIQUE (rid, version)
)
;;
CREATE INDEX ix_version_updated ON resource_version (last_updated)
;;
CREATE INDEX ix_version_type_updated ON resource_version (res_type, last_updated)
;;
CREATE TABLE store_setting (
	"key" VARCHAR(64) NOT NULL, 
	value VARCHAR(256) NOT NULL, 
	PRIMARY KEY ("key")
)
;;
CREATE TABLE conditional_claim (
	res_type VARCHAR(64) NOT NULL, 
	criteria_hash VARCHAR(64) NOT NULL, 
	rid BIGINT NOT NULL, 
	PRIMARY KEY (res_type, criteria_hash)
)
;;
CREATE TABLE load_checkpoint (
	source_key VARCHAR(64) NOT NULL, 
	source TEXT NOT NULL, 
	lines_done BIGINT NOT NULL, 
	completed BOOLEAN NOT NULL, 
	PRIMARY KEY (source_key)
)
;;
CREATE TABLE export_job (
	job_id VARCHAR(64) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	request TEXT NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	group_id VARCHAR(64), 
	types TEXT, 
	since FLOAT, 
	transaction_time FLOAT NOT NULL, 
	progress TEXT, 
	manifest BLOB, 
	error TEXT, 
	PRIMARY KEY (job_id)
)
;;
CREATE TABLE sp_string (
	rid BIGINT NOT NULL, 
	res_type VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	normalized TEXT NOT NULL, 
	exact TEXT NOT NULL
)
;;
CREATE INDEX ix_sp_string_rid ON sp_string (rid)
;;
CREATE INDEX ix_sp_string_normalized ON sp_string (res_type, param, normalized)
;;
CREATE TABLE sp_token (
	rid BIGINT NOT NULL, 
	res_type VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	system TEXT, 
	code TEXT, 
	text TEXT
)
;;
CREATE INDEX ix_sp_token_code_system ON sp_token (res_type, param, code, system)
;;
CREATE INDEX ix_sp_token_rid ON sp_token (rid)
;;
CREATE TABLE sp_date (
	rid BIGINT NOT NULL, 
	res_type VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	low FLOAT NOT NULL, 
	high FLOAT NOT NULL
)
;;
CREATE INDEX ix_sp_date_low ON sp_date (res_type, param, low)
;;
CREATE INDEX ix_sp_date_high ON sp_date (res_type, param, high)
;;
CREATE INDEX ix_sp_date_rid ON sp_date (rid)
;;
CREATE TABLE sp_reference (
	rid BIGINT NOT NULL, 
	res_type VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	target_type VARCHAR(64), 
	target_id VARCHAR(64), 
	url TEXT
)
;;
CREATE INDEX ix_sp_reference_rid ON sp_reference (rid)
;;
CREATE INDEX ix_sp_reference_url ON sp_reference (res_type, param, url)
;;
CREATE INDEX ix_sp_reference_target ON sp_reference (target_type, target_id)
;;
CREATE INDEX ix_sp_reference_target_id_target_type ON sp_reference (res_type, param, target_id, target_type)
;;
CREATE TABLE sp_quantity (
	rid BIGINT NOT NULL, 
	res_type VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	value FLOAT NOT NULL, 
	low FLOAT NOT NULL, 
	high FLOAT NOT NULL, 
	system TEXT, 
	code TEXT, 
	unit TEXT
)
;;
CREATE INDEX ix_sp_quantity_value ON sp_quantity (res_type, param, value)
;;
CREATE INDEX ix_sp_quantity_rid ON sp_quantity (rid)
;;
CREATE TABLE sp_number (
	rid BIGINT NOT NULL, 
	res_type VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	value FLOAT NOT NULL, 
	low FLOAT NOT NULL, 
	high FLOAT NOT NULL
)
;;
CREATE INDEX ix_sp_number_rid ON sp_number (rid)
;;
CREATE INDEX ix_sp_number_value ON sp_number (res_type, param, value)
;;
CREATE TABLE sp_uri (
	rid BIGINT NOT NULL, 
	res_type VARCHAR(64) NOT NULL, 
	param VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL
)
;;
CREATE INDEX ix_sp_uri_rid ON sp_uri (rid)
;;
CREATE INDEX ix_sp_uri_value ON sp_uri (res_type, param, value)
;;
CREATE TABLE mpi_member (
	patient_id VARCHAR(64) NOT NULL, 
	person_id VARCHAR(64) NOT NULL, 
	probability FLOAT NOT NULL, 
	manual BOOLEAN NOT NULL, 
	updated FLOAT NOT NULL, 
	PRIMARY KEY (patient_id)
)
;;
CREATE INDEX ix_mpi_member_person ON mpi_member (person_id)
;;
CREATE TABLE mpi_decision (
	id INTEGER NOT NULL, 
	patient_a VARCHAR(64) NOT NULL, 
	patient_b VARCHAR(64) NOT NULL, 
	decision VARCHAR(16) NOT NULL, 
	reviewer TEXT NOT NULL, 
	reason TEXT, 
	at FLOAT NOT NULL, 
	active BOOLEAN NOT NULL, 
	PRIMARY KEY (id)
)
;;
CREATE INDEX ix_mpi_decision_a ON mpi_decision (patient_a)
;;
CREATE INDEX ix_mpi_decision_b ON mpi_decision (patient_b)
;;
CREATE TABLE mpi_review (
	id INTEGER NOT NULL, 
	patient_a VARCHAR(64) NOT NULL, 
	patient_b VARCHAR(64) NOT NULL, 
	probability FLOAT NOT NULL, 
	evidence TEXT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	created FLOAT NOT NULL, 
	decided_by TEXT, 
	decided_at FLOAT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_mpi_review_pair UNIQUE (patient_a, patient_b)
)
;;
CREATE INDEX ix_mpi_review_status ON mpi_review (status, probability)
;;
CREATE TABLE mpi_event (
	id INTEGER NOT NULL, 
	at FLOAT NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	actor TEXT NOT NULL, 
	reason TEXT, 
	detail TEXT NOT NULL, 
	reverted_by INTEGER, 
	PRIMARY KEY (id)
)
;;
CREATE TABLE mpi_model (
	id INTEGER NOT NULL, 
	created FLOAT NOT NULL, 
	model BLOB NOT NULL, 
	PRIMARY KEY (id)
)
;;
CREATE TABLE care_fact (
	patient_id VARCHAR(64) NOT NULL, 
	source VARCHAR(140) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	code VARCHAR(64), 
	day INTEGER, 
	v1 FLOAT, 
	v2 FLOAT, 
	org VARCHAR(64)
)
;;
CREATE INDEX ix_care_fact_kind ON care_fact (kind, code, day)
;;
CREATE INDEX ix_care_fact_patient ON care_fact (patient_id, kind)
;;
CREATE INDEX ix_care_fact_org ON care_fact (org, kind)
;;
CREATE INDEX ix_care_fact_source ON care_fact (source)
;;
CREATE TABLE care_fact_state (
	"key" VARCHAR(32) NOT NULL, 
	value VARCHAR(64) NOT NULL, 
	PRIMARY KEY ("key")
)
;;
CREATE TABLE mh_state (
	"key" VARCHAR(32) NOT NULL, 
	value VARCHAR(64) NOT NULL, 
	PRIMARY KEY ("key")
)
;;
CREATE TABLE export_requester (
	job_id VARCHAR(64) NOT NULL, 
	requester TEXT NOT NULL, 
	scopes TEXT NOT NULL, 
	patient VARCHAR(64), 
	facility VARCHAR(64), 
	PRIMARY KEY (job_id)
)
;;
CREATE TABLE audit_log (
	seq INTEGER NOT NULL, 
	recorded FLOAT NOT NULL, 
	event BLOB NOT NULL, 
	prev_hash VARCHAR(64) NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	patient_id VARCHAR(64), 
	agent_user TEXT, 
	agent_client TEXT, 
	action VARCHAR(1) NOT NULL, 
	outcome VARCHAR(2) NOT NULL, 
	interaction VARCHAR(32) NOT NULL, 
	entity_type VARCHAR(64), 
	entity_id VARCHAR(64), 
	break_glass BOOLEAN NOT NULL, 
	PRIMARY KEY (seq)
)
;;
CREATE INDEX ix_audit_log_agent_client ON audit_log (agent_client, seq)
;;
CREATE INDEX ix_audit_log_recorded ON audit_log (recorded)
;;
CREATE INDEX ix_audit_log_entity ON audit_log (entity_type, entity_id)
;;
CREATE INDEX ix_audit_log_agent_user ON audit_log (agent_user, seq)
;;
CREATE TABLE audit_patient (
	seq BIGINT NOT NULL, 
	patient_id VARCHAR(64) NOT NULL, 
	CONSTRAINT pk_audit_patient PRIMARY KEY (seq, patient_id)
)
;;
CREATE INDEX ix_audit_patient_patient ON audit_patient (patient_id, seq)
;;
CREATE TABLE audit_chain_head (
	id INTEGER NOT NULL, 
	seq BIGINT NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	updated FLOAT NOT NULL, 
	PRIMARY KEY (id)
)
;;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
;;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
;;
CREATE TRIGGER audit_patient_no_update BEFORE UPDATE ON audit_patient
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
;;
CREATE TRIGGER audit_patient_no_delete BEFORE DELETE ON audit_patient
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
;;
CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_chain_head
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
;;
CREATE TRIGGER audit_head_no_rewind BEFORE UPDATE ON audit_chain_head
        WHEN NEW.seq < OLD.seq BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
