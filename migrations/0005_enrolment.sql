-- Who the provisioning key may still reach. The key registers a new device
-- and issues it a token of its own (stored as its hash, as for `hub device
-- add`); the device's first batch proves that it has read that token, and
-- from then on only the token works. `key_claimable` is 1 between the two:
-- the key may register the device again (a device that lost its token
-- frame is not locked out). It is 0 for every device that has credentials
-- of its own: a token from `hub device add`, a confirmed issued token, a
-- certificate identity, and devices that MQTT or a cluster's stream
-- brought in.
--
-- Devices that registered with the key before tokens were issued have no
-- token: the key may reach them once more, and their next connection with
-- it issues their token.
ALTER TABLE devices ADD COLUMN key_claimable INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET key_claimable = 1 WHERE token_hash IS NULL AND revoked_ms IS NULL;
