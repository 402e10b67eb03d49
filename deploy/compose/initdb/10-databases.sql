-- One database per organization: two organizations must never share one (the node refuses).
CREATE DATABASE acme OWNER verbund;
CREATE DATABASE globex OWNER verbund;
CREATE DATABASE fixit OWNER verbund;
