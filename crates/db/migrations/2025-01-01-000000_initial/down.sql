DROP TABLE episodes;
DROP TABLE captures;
DROP TABLE api_keys;
DROP TABLE tenants;
