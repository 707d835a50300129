//! WBEM protocol front ends: CIM-XML over HTTP(S) (DSP0200/DSP0201) with Basic
//! authentication and TLS, turning wire requests into calls on a [`cosnap_cim::CimProvider`].
