/** Version of tanren, reported in run memos and `tanren --version`. */
export const TANREN_VERSION = '0.1.0';
