-- A partner's revocation list (PEM), loaded by an operator; NULL until one is loaded.
ALTER TABLE partners ADD COLUMN crl_pem TEXT;
