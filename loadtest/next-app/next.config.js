/** @type {import('next').NextConfig} */
module.exports = {
  poweredByHeader: false,
  // The proxy in front (the edge or NGINX) compresses; Next's own gzip would leave it nothing to do.
  compress: false,
};
