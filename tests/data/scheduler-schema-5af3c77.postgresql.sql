-- The scheduler's schema as made by main at 5af3c77 (Base.metadata.create_all), for the migration test.
CREATE TABLE gateways (
	id VARCHAR(64) NOT NULL, 
	commune VARCHAR(200), 
	status VARCHAR(16), 
	status_ts BIGINT, 
	last_seen BIGINT, 
	version VARCHAR(64), 
	PRIMARY KEY (id)
);
CREATE TABLE media (
	sha256 VARCHAR(64) NOT NULL, 
	size BIGINT NOT NULL, 
	duration_ms BIGINT NOT NULL, 
	content_type VARCHAR(64) NOT NULL, 
	path VARCHAR(500) NOT NULL, 
	original_name VARCHAR(300), 
	created_at BIGINT NOT NULL, 
	PRIMARY KEY (sha256)
);
CREATE TABLE broadcasts (
	id VARCHAR(128) NOT NULL, 
	title VARCHAR(200), 
	media_sha256 VARCHAR(64) NOT NULL, 
	start_at BIGINT, 
	priority INTEGER NOT NULL, 
	volume INTEGER NOT NULL, 
	repeat INTEGER NOT NULL, 
	targets JSON NOT NULL, 
	created_at BIGINT NOT NULL, 
	created_by VARCHAR(200), 
	expires_at BIGINT NOT NULL, 
	cancelled BOOLEAN NOT NULL, 
	cancelled_at BIGINT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(media_sha256) REFERENCES media (sha256)
);
CREATE TABLE speakers (
	id SERIAL NOT NULL, 
	gateway_id VARCHAR(64) NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	name VARCHAR(200), 
	online BOOLEAN, 
	volume INTEGER, 
	last_seen BIGINT, 
	PRIMARY KEY (id), 
	UNIQUE (gateway_id, device_id), 
	FOREIGN KEY(gateway_id) REFERENCES gateways (id) ON DELETE CASCADE
);
CREATE TABLE gateway_deliveries (
	id SERIAL NOT NULL, 
	broadcast_id VARCHAR(128) NOT NULL, 
	gateway_id VARCHAR(64) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	command_id VARCHAR(128) NOT NULL, 
	envelope TEXT NOT NULL, 
	expires_at BIGINT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	last_sent_at BIGINT, 
	acked_at BIGINT, 
	error VARCHAR(500), 
	PRIMARY KEY (id), 
	UNIQUE (broadcast_id, gateway_id, kind), 
	FOREIGN KEY(broadcast_id) REFERENCES broadcasts (id) ON DELETE CASCADE, 
	FOREIGN KEY(gateway_id) REFERENCES gateways (id), 
	UNIQUE (command_id)
);
CREATE INDEX ix_gateway_deliveries_pending ON gateway_deliveries (gateway_id, state);
CREATE INDEX ix_gateway_deliveries_expiry ON gateway_deliveries (state, expires_at);
CREATE TABLE speaker_deliveries (
	id SERIAL NOT NULL, 
	broadcast_id VARCHAR(128) NOT NULL, 
	gateway_id VARCHAR(64) NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	delivered_at BIGINT, 
	started_at BIGINT, 
	ended_at BIGINT, 
	updated_at BIGINT, 
	reason VARCHAR(500), 
	PRIMARY KEY (id), 
	UNIQUE (broadcast_id, gateway_id, device_id), 
	FOREIGN KEY(broadcast_id) REFERENCES broadcasts (id) ON DELETE CASCADE, 
	FOREIGN KEY(gateway_id) REFERENCES gateways (id)
);
