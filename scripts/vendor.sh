#!/usr/bin/env bash
# Vendor the web page's JavaScript libraries into the package (service/api/ui/vendor/), at pinned versions,
# with their licences, so that `pip install` needs no Node and the page works offline. Run by `make vendor`;
# the result is committed. Needs npm (and the npm registry) only when run.
set -euo pipefail
cd "$(dirname "$0")/.."
LEAFLET=1.9.4
OPENSEADRAGON=6.1.1
dest=service/api/ui/vendor
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "leaflet@$LEAFLET" "openseadragon@$OPENSEADRAGON" >/dev/null)
mkdir -p "$tmp/leaflet" "$tmp/openseadragon"
tar -xzf "$tmp/leaflet-$LEAFLET.tgz" -C "$tmp/leaflet"
tar -xzf "$tmp/openseadragon-$OPENSEADRAGON.tgz" -C "$tmp/openseadragon"
rm -rf "$dest"
mkdir -p "$dest/leaflet" "$dest/openseadragon"
cp "$tmp/leaflet/package/dist/leaflet.js" "$tmp/leaflet/package/dist/leaflet.css" "$dest/leaflet/"
cp -r "$tmp/leaflet/package/dist/images" "$dest/leaflet/"
cp "$tmp/leaflet/package/LICENSE" "$dest/leaflet/LICENSE"
cp "$tmp/openseadragon/package/build/openseadragon/openseadragon.min.js" "$dest/openseadragon/"
cp -r "$tmp/openseadragon/package/build/openseadragon/images" "$dest/openseadragon/"
cp "$tmp/openseadragon/package/LICENSE.txt" "$dest/openseadragon/LICENSE.txt"
printf 'leaflet %s\nopenseadragon %s\n' "$LEAFLET" "$OPENSEADRAGON" > "$dest/VERSIONS"
echo "vendored into $dest:"; cat "$dest/VERSIONS"
